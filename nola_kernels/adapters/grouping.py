"""Grouped generation: one pass over each basis family per model forward, for all its layers.

Layers whose factors come from one family (the same seed, factor shape, basis count,
distribution, backend, device and coefficient dtype: every module of one shape after
inject(share_basis=True)) differ only in their coefficients. With grouping on, a forward pre-hook
on the model stacks the active adapters' coefficients of each family and mixes all of them in one
call per family (families.mix_family: nola_mix_grouped); each layer then takes its factor pair from that pass and runs
only the two skinny products (lowrank_delta, torch's GEMM). Autograd carries the backward: the
factors' gradients of all layers meet at the family's unbind and reach one
nola_project_grouped call per family.

Only forwards with grad enabled group (training; under no_grad or inference_mode each layer runs
its own path). A forward post-hook, which runs even when the forward raises, ends the pass: a
layer called on its own afterwards runs its own path. The factors stay with the layers after
the forward so that a checkpointed block recomputed in the backward takes the same factors (the
latest pass's: after two forwards, both passes' blocks take the second's) (docs/adapters.md,
"Grouped generation"); they are used there only inside a backward and only while the
coefficients are the ones they were mixed from.
"""

import torch

from ..backends import resolve_backend
from ..validation import check_bool, check_module
from .families import families, mix_families
from .layer import NOLALinear, adapted_modules


class GroupedPass:
    """One grouped forward of a model: live from its pre-hook to its post-hook."""

    def __init__(self):
        self.live = True


class GroupedFactors:
    """One layer's factors from a grouped pass: a = a0 + mix(alpha), b = scaling * mix(beta), in
    float32 (float64 for float64 coefficients), with the adapter and coefficient versions they
    were mixed from."""

    def __init__(self, grouped_pass, adapter, a, b):
        self.grouped_pass, self.adapter, self.a, self.b = grouped_pass, adapter, a, b
        self.versions = (adapter.alpha._version, adapter.beta._version)

    def usable(self, adapter):
        """During the pass; after it only inside a backward (a checkpointed block's recompute)
        and while the coefficients are unchanged."""
        if adapter is not self.adapter:
            return False
        if self.grouped_pass.live:
            return True
        return torch._C._current_graph_task_id() != -1 and self.versions == (
            adapter.alpha._version,
            adapter.beta._version,
        )

    # A copy or a pickle of the model (deepcopy refuses tensors inside a graph anyway) never takes
    # this model's factors: the copy's layers run their own path until its next grouped forward.
    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return type(None), ()


def _entry(layer):
    """(layer, its active adapter, the backend it mixes on): what families() takes."""
    adapter = layer.adapters[layer.active_adapter]
    return layer, adapter, resolve_backend(layer.backend, adapter.alpha.device)


def _shared_families(layers):
    """{Family: [Member]} of the A and B factors of the layers whose adapter is active and not
    merged, keeping only the families of layers that share at least one family with another: a
    layer whose both families hold it alone keeps its own path (fused where its backend prefers
    it)."""
    found = families(
        _entry(layer) for layer in layers if layer.active_adapter is not None and layer.merged_adapter is None
    )
    shared = {member.owner for members in found.values() if len(members) > 1 for member in members}
    # A family's layers are all shared or none is (a family of two or more shares all of its own).
    return {family: members for family, members in found.items() if members[0].owner in shared}


def start_grouped_pass(model, args):
    """Forward pre-hook: mix every shared family once and hand each layer its factor pair."""
    if not torch.is_grad_enabled():
        return
    layers = adapted_modules(model).values()
    for layer in layers:
        layer.grouped = None
    grouped_pass = GroupedPass()
    for layer, (a, b) in mix_families(_shared_families(layers)).items():
        layer.grouped = GroupedFactors(grouped_pass, layer.adapters[layer.active_adapter], a, b)


def end_grouped_pass(model, args, output):
    """Forward post-hook (also on an exception): the pass's factors serve only recomputes now."""
    for layer in adapted_modules(model).values():
        if layer.grouped is not None:
            layer.grouped.grouped_pass.live = False


def _hooks(model):
    return [
        (hooks, key)
        for hooks, function in ((model._forward_pre_hooks, start_grouped_pass), (model._forward_hooks, end_grouped_pass))
        for key, hook in hooks.items()
        if hook is function
    ]


def is_grouped(model):
    """Whether group_generation(model) is on."""
    return bool(_hooks(check_module("model", model)))


def group_generation(model, enabled=True):
    """Turn grouped generation on for `model`'s forwards (off with enabled=False, as ungroup
    does): each shared basis family is mixed once per forward for all its layers, and projected
    once in the backward. Applies to the NOLA layers inside `model` at each forward (adapters injected,
    switched, merged or deleted later included). Calling it twice changes nothing."""
    check_module("model", model)
    check_bool("enabled", enabled)
    if enabled and not adapted_modules(model):
        raise ValueError("model has no NOLA layers: inject adapters before grouping their generation")
    if enabled and not is_grouped(model):
        model.register_forward_pre_hook(start_grouped_pass)
        model.register_forward_hook(end_grouped_pass, always_call=True)
    if not enabled:
        ungroup(model)


def ungroup(model):
    """Grouped generation off for `model` and every module inside it, and no NOLA layer inside
    keeping a pass's factors (also what unload and merge_and_unload do)."""
    for module in model.modules():
        for hooks, key in _hooks(module):
            del hooks[key]
        if isinstance(module, NOLALinear):
            module.grouped = None


def ungroup_emptied(model):
    """Grouped generation off for every module inside `model` that no longer holds a NOLA layer
    (after delete_adapter removed its last ones): with no family left, its hooks would only walk
    the modules at every forward."""
    for module in model.modules():
        if _hooks(module) and not adapted_modules(module):
            ungroup(module)
