"""Put NOLA adapters into a model, PEFT style: pick target modules by name or regex, wrap each in
a NOLALinear, train only the coefficients; switch or remove adapters model-wide.

Each function that changes a model first plans: it checks every argument and every module it
would touch and raises before anything changes; only a plan that passed is applied."""

import dataclasses
import re

from ..validation import check_backend_name, check_module, check_name, check_seed, check_target_modules
from .base_layer import features
from .config import AdapterConfig
from .copied import CopiedModule, copied_modules
from .grouping import ungroup, ungroup_emptied
from .layer import NOLALinear, adapted_modules, check_factor_shapes, check_foldable
from .seeds import module_seeds


def matches(name, target_modules):
    """PEFT's rule: a string is a regex the whole name must match; a list of names matches a
    module whose name equals one of them or ends with "." + one of them."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith("." + target) for target in target_modules)


def _targets(model, target_modules, exclude_modules):
    # Layers inside an adapted layer (its base) are not targets: the adapted layer itself is.
    # Nor are those inside a module trained whole (its original and copies).
    adapted = [*adapted_modules(model), *copied_modules(model)]
    return {
        name: module
        for name, module in model.named_modules()
        if name
        and matches(name, target_modules)
        and not (exclude_modules is not None and matches(name, exclude_modules))
        and not any(name.startswith(p + ".") for p in adapted)
    }


@dataclasses.dataclass(frozen=True)
class Placement:
    """One module an injection changes: a NOLALinear gets one more adapter, any other module is
    wrapped in a new NOLALinear."""

    name: str
    module: object
    in_features: int
    out_features: int
    seed_a: int
    seed_b: int


@dataclasses.dataclass(frozen=True)
class InjectionPlan:
    adapter_name: str
    config: AdapterConfig
    backend: str
    placements: tuple[Placement, ...]
    copies: tuple[tuple[str, object], ...] = ()  # (name, module) of each module to train whole

    @property
    def names(self):
        return [placement.name for placement in self.placements]


def plan_injection(model, target_modules, *, seed, adapter_name="default", backend="auto", **settings):
    """What inject(model, target_modules, ...) would do, checked in full; changes nothing.
    `settings` are AdapterConfig's other fields (rank, num_basis, ...)."""
    check_module("model", model)
    check_target_modules(target_modules)
    check_seed("seed", seed)
    check_name("adapter_name", adapter_name)
    check_backend_name(backend)
    config = AdapterConfig(seed=seed, target_modules=target_modules, **settings)
    targets = _targets(model, target_modules, config.exclude_modules)
    if not targets:
        raise ValueError(
            f"no module of the model matches target_modules={target_modules!r} "
            f"(exclude_modules={config.exclude_modules!r})"
        )
    placements = tuple(plan_placement(name, module, config, adapter_name) for name, module in targets.items())
    _check_switch(adapted_modules(model), adapter_name, adding=targets)
    copies = _copy_targets(model, config.modules_to_save, adapter_name, [*adapted_modules(model), *targets])
    return InjectionPlan(adapter_name, config, backend, placements, copies)


def _copy_targets(model, modules_to_save, adapter_name, adapted):
    """(name, module) of each module `modules_to_save` names (by the rule of `matches`; the
    outermost where nested ones match), checked: none is, holds or lies in an adapted layer
    (`adapted`: names) or holds a module already trained whole."""
    if modules_to_save is None:
        return ()
    existing = copied_modules(model)
    found = {}
    for name, module in model.named_modules():
        if name and matches(name, modules_to_save) and not any(_within(name, p) for p in [*existing, *found]):
            found[name] = module
    if not found:
        raise ValueError(f"no module of the model matches modules_to_save={list(modules_to_save)!r}")
    for name, module in found.items():
        overlap = [other for other in adapted if other == name or _within(other, name) or _within(name, other)]
        if overlap:
            raise ValueError(
                f"modules_to_save: {name} overlaps the adapted layer {overlap[0]} (a module is either "
                "adapted or trained whole)"
            )
        inner = [other for other in existing if _within(other, name)]
        if inner:
            raise ValueError(f"modules_to_save: {name} holds {inner[0]}, which is already trained whole")
        if isinstance(module, CopiedModule) and adapter_name in module.modules_to_save:
            raise ValueError(f"modules_to_save: {name} already has a copy for adapter {adapter_name!r}")
    return tuple(found.items())


def _within(name, outer):
    return name.startswith(outer + ".")


def plan_placement(name, module, config, adapter_name):
    in_features, out_features = features(module, name)
    seed_a, seed_b = module_seeds(config.seed, name, in_features, out_features, config.share_basis)
    if isinstance(module, NOLALinear):
        try:
            module.check_adapter(adapter_name, config, seed_a, seed_b)
        except (RuntimeError, ValueError) as error:
            raise type(error)(f"{name}: {error}") from error
    else:
        check_factor_shapes(config, in_features, out_features, name)
    return Placement(name, module, in_features, out_features, seed_a, seed_b)


def apply_injection(model, plan):
    """Carry out a plan from plan_injection; returns the adapted module names."""
    for placement in plan.placements:
        place_adapter(model, placement, plan.adapter_name, plan.config, plan.backend)
    for name, module in plan.copies:
        if isinstance(module, CopiedModule):
            module.add_copy(plan.adapter_name)
        else:
            replace_module(model, name, CopiedModule(module, plan.adapter_name))
    _activate(model, plan.adapter_name)
    return plan.names


def place_adapter(model, placement, adapter_name, config, backend):
    """Add adapter `adapter_name` where `placement` says: to the NOLALinear there now, or by
    wrapping the module there in a new one. Returns the layer."""
    module = model.get_submodule(placement.name)
    if isinstance(module, NOLALinear):
        module.add_adapter(adapter_name, config, placement.seed_a, placement.seed_b)
        return module
    layer = NOLALinear(
        module,
        seed_a=placement.seed_a,
        seed_b=placement.seed_b,
        adapter_name=adapter_name,
        backend=backend,
        **config.to_dict(),
    )
    replace_module(model, placement.name, layer)
    return layer


def inject(
    model,
    target_modules,
    *,
    rank,
    num_basis,
    seed,
    num_basis_b=None,
    lora_alpha=None,
    dropout=0.0,
    distribution="uniform",
    share_basis=False,
    exclude_modules=None,
    modules_to_save=None,
    adapter_name="default",
    backend="auto",
):
    """Add adapter `adapter_name` to every module matching `target_modules` and not
    `exclude_modules` (both by the rule of `matches`),
    make it active and freeze everything else in the model. The modules `modules_to_save` names
    (a list, by the same rule) train whole: each gets a trainable copy for this adapter (PEFT's
    option: a new classifier head), saved with it. Each module's seeds derive from
    `seed` and its name (from its shape with share_basis=True): see docs/adapters.md. New layers
    take the training mode of the module they replace. Any bad argument or module raises before
    the model changes. Returns the adapted module names."""
    plan = plan_injection(
        model,
        target_modules,
        rank=rank,
        num_basis=num_basis,
        seed=seed,
        num_basis_b=num_basis_b,
        lora_alpha=lora_alpha,
        dropout=dropout,
        distribution=distribution,
        share_basis=share_basis,
        exclude_modules=exclude_modules,
        modules_to_save=modules_to_save,
        adapter_name=adapter_name,
        backend=backend,
    )
    return apply_injection(model, plan)


def replace_module(model, name, module):
    """Put `module` where submodule `name` of `model` is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def _check_switch(layers, adapter_name, adding=()):
    """A layer cannot switch away from its merged adapter: find any such layer before switching.
    `adding`: names of layers about to get adapter `adapter_name`."""
    for name, layer in layers.items():
        active = adapter_name if adapter_name in layer.adapters or name in adding else None
        if layer.merged_adapter is not None and layer.merged_adapter != active:
            raise RuntimeError(
                f"{name} has adapter {layer.merged_adapter!r} merged: unmerge it before switching "
                f"to {adapter_name!r}"
            )


def _check_known(layers, adapter_name):
    # Every adapter adapts at least one layer: its copies alone do not make it known.
    if not any(adapter_name in layer.adapters for layer in layers.values()):
        raise KeyError(f"the model has no adapter named {adapter_name!r}")


def set_active_adapter(model, adapter_name):
    """Make `adapter_name` active in every adapted layer (None: the base model alone) and its
    coefficients the only trainable parameters of the model."""
    check_module("model", model)
    layers = adapted_modules(model)
    if adapter_name is not None:
        check_name("adapter_name", adapter_name)
        _check_known(layers, adapter_name)
    _check_switch(layers, adapter_name)
    _activate(model, adapter_name)


def _activate(model, adapter_name):
    model.requires_grad_(False)
    for layer in adapted_modules(model).values():
        layer.set_active(adapter_name if adapter_name in layer.adapters else None)
        if layer.active_adapter is not None:
            layer.adapters[adapter_name].alpha.requires_grad_(True)
            layer.adapters[adapter_name].beta.requires_grad_(True)
    for copied in copied_modules(model).values():
        copied.set_active(adapter_name)
        if copied.active_adapter is not None:
            copied.active_module.requires_grad_(True)


def delete_adapter(model, adapter_name):
    """Remove adapter `adapter_name` from every layer (KeyError if no layer has it); a layer left
    without adapters becomes its base layer again, and a module grouped by group_generation that
    is left without NOLA layers is ungrouped."""
    check_module("model", model)
    check_name("adapter_name", adapter_name)
    layers = adapted_modules(model)
    _check_known(layers, adapter_name)
    for name, layer in layers.items():
        if layer.merged_adapter == adapter_name:
            check_foldable(name, layer)
    for name, layer in layers.items():
        if adapter_name in layer.adapters:
            layer.delete_adapter(adapter_name)
        if not layer.adapters:
            ungroup(layer)  # the dropped layer lets go of its factors
            replace_module(model, name, layer.base_layer)
    for name, copied in copied_modules(model).items():
        if adapter_name in copied.modules_to_save:
            copied.delete_copy(adapter_name)
        if not copied.modules_to_save:
            replace_module(model, name, copied.original_module)
    ungroup_emptied(model)


def unload(model):
    """Remove every adapter (unmerging merged ones), every copy modules_to_save made and grouped
    generation: the model's own layers come back, the very same module objects. Their trainable
    flags are the caller's to restore."""
    check_module("model", model)
    layers = adapted_modules(model)
    for name, layer in layers.items():
        if layer.merged_adapter is not None:
            check_foldable(name, layer)
    ungroup(model)
    for name, layer in layers.items():
        if layer.merged_adapter is not None:
            layer.unmerge()
        replace_module(model, name, layer.base_layer)
    for name, copied in copied_modules(model).items():
        replace_module(model, name, copied.original_module)
    return model
