"""Grouped generation: one pass over each basis family per model forward, for all its layers.

Layers whose factors come from one family (the same seed, factor shape, basis count,
distribution, backend, device and coefficient dtype: every module of one shape after
inject(share_basis=True)) differ only in their coefficients. With grouping on, a forward pre-hook
on the model stacks the active adapters' coefficients of each family and mixes all of them in one
nola_mix_grouped call per family; each layer then takes its factor pair from that pass and runs
only the two skinny products (lowrank_delta, torch's GEMM). Autograd carries the backward: the
factors' gradients of all layers meet at the family's unbind and reach one
nola_project_grouped call per family.

Only forwards with grad enabled group (training; under no_grad or inference_mode each layer runs
its own path). A forward post-hook, which runs even when the forward raises, ends the pass: a
layer called on its own afterwards runs its own path. The factors stay with the layers after
the forward so that a checkpointed block recomputed in the backward takes the same factors
(docs/adapters.md, "Grouped generation"); they are used there only inside a backward and only
while the coefficients are the ones they were mixed from.
"""

from collections import defaultdict

import torch

from ..api import nola_mix_grouped
from ..backends import resolve_backend
from ..validation import check_bool, check_module
from .factor_cache import mixing_coeffs
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


def _families(layers):
    """{family: [(layer, adapter, coefficients), ...]} for the A and B factors of the layers whose
    adapter is active and not merged. A family key: (role, seed, rows, cols, basis count,
    distribution, backend, device, coefficient dtype)."""
    families = defaultdict(list)
    for layer in layers:
        if layer.active_adapter is None or layer.merged_adapter is not None:
            continue
        adapter = layer.adapters[layer.active_adapter]
        config = adapter.config
        alpha, beta = mixing_coeffs(adapter.alpha), mixing_coeffs(adapter.beta)
        backend = resolve_backend(layer.backend, alpha.device)
        shared = (config.distribution, backend, alpha.device)
        a_key = ("A", adapter.seed_a, config.rank, adapter.in_features, config.k, *shared, alpha.dtype)
        b_key = ("B", adapter.seed_b, adapter.out_features, config.rank, config.l, *shared, beta.dtype)
        families[a_key].append((layer, adapter, alpha))
        families[b_key].append((layer, adapter, beta))
    return families


def _grouped_layers(families):
    """The layers at least one of whose families holds two or more layers; a layer whose both
    families are its own keeps its own path (fused where its backend prefers it)."""
    return {id(layer) for members in families.values() if len(members) > 1 for layer, _, _ in members}


def _mix_family(key, members):
    """The factors of every layer of one family from one nola_mix_grouped call: A rows plus a0
    (the family's seed and shape make a0 the same for all), B rows times each layer's scaling."""
    role, seed, rows, cols, _, distribution, backend, device, _ = key
    coeffs = torch.stack([coefficients for _, _, coefficients in members])
    mixed = nola_mix_grouped(coeffs, seed, (rows, cols), distribution=distribution, backend=backend)
    if role == "A":
        return (mixed + members[0][1].offset(device)).unbind(0)
    return [b * adapter.config.scaling for b, (_, adapter, _) in zip(mixed.unbind(0), members, strict=True)]


def start_grouped_pass(model, args):
    """Forward pre-hook: mix every shared family once and hand each layer its factor pair."""
    if not torch.is_grad_enabled():
        return
    layers = adapted_modules(model).values()
    for layer in layers:
        layer.grouped = None
    families = _families(layers)
    grouped = _grouped_layers(families)
    factors = defaultdict(dict)
    for key, members in families.items():
        # A family's layers are all grouped or none is (a shared family groups all of its own).
        if id(members[0][0]) not in grouped:
            continue
        for (layer, adapter, _), factor in zip(members, _mix_family(key, members), strict=True):
            factors[layer][key[0]] = (adapter, factor)
    grouped_pass = GroupedPass()
    for layer, pair in factors.items():
        (adapter, a), (_, b) = pair["A"], pair["B"]
        layer.grouped = GroupedFactors(grouped_pass, adapter, a, b)


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
