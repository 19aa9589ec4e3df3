"""Put NOLA adapters into a model, PEFT style: pick target modules by name or regex, wrap each in
a NOLALinear, train only the coefficients; switch or remove adapters model-wide."""

import re

from .base_layer import features
from .config import AdapterConfig
from .layer import NOLALinear
from .seeds import module_seeds


def matches(name, target_modules):
    """PEFT's rule: a string is a regex the whole name must match; a list of names matches a
    module whose name equals one of them or ends with "." + one of them."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith("." + target) for target in target_modules)


def adapted_modules(model):
    """{name: NOLALinear} of every adapted layer in `model`, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, NOLALinear)}


def _targets(model, target_modules):
    # Layers inside an adapted layer (its base) are not targets: the adapted layer itself is.
    adapted = adapted_modules(model)
    return {
        name: module
        for name, module in model.named_modules()
        if name and matches(name, target_modules) and not any(name.startswith(p + ".") for p in adapted)
    }


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
    adapter_name="default",
    backend="auto",
):
    """Add adapter `adapter_name` to every module matching `target_modules` (see `matches`),
    make it active and freeze everything else in the model. Each module's seeds derive from
    `seed` and its name (from its shape with share_basis=True): see docs/adapters.md.
    Returns the adapted module names."""
    if not target_modules or not isinstance(target_modules, str | list | tuple):
        raise ValueError(
            f"target_modules must be a regex or a non-empty list of names, got {target_modules!r}"
        )
    config = AdapterConfig(
        rank=rank,
        num_basis=num_basis,
        num_basis_b=num_basis_b,
        lora_alpha=lora_alpha,
        dropout=dropout,
        distribution=distribution,
        seed=seed,
        share_basis=share_basis,
        target_modules=target_modules,
    )
    targets = _targets(model, target_modules)
    if not targets:
        raise ValueError(f"no module of the model matches target_modules={target_modules!r}")
    for name, module in targets.items():
        if isinstance(module, NOLALinear):
            if adapter_name in module.adapters:
                raise ValueError(f"{name} already has an adapter named {adapter_name!r}")
            seed_a, seed_b = module_seeds(seed, name, module.in_features, module.out_features, share_basis)
            module.add_adapter(adapter_name, config, seed_a, seed_b)
        else:
            seed_a, seed_b = module_seeds(seed, name, *features(module, name), share_basis)
            layer = NOLALinear(
                module,
                seed_a=seed_a,
                seed_b=seed_b,
                adapter_name=adapter_name,
                backend=backend,
                **config.to_dict(),
            )
            replace_module(model, name, layer)
    set_active_adapter(model, adapter_name)
    return list(targets)


def replace_module(model, name, module):
    """Put `module` where submodule `name` of `model` is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def set_active_adapter(model, adapter_name):
    """Make `adapter_name` active in every adapted layer (None: the base model alone) and its
    coefficients the only trainable parameters of the model."""
    layers = adapted_modules(model)
    if adapter_name is not None and not any(adapter_name in layer.adapters for layer in layers.values()):
        raise KeyError(f"the model has no adapter named {adapter_name!r}")
    model.requires_grad_(False)
    for layer in layers.values():
        layer.set_active(adapter_name if adapter_name in layer.adapters else None)
        if layer.active_adapter is not None:
            layer.adapters[adapter_name].alpha.requires_grad_(True)
            layer.adapters[adapter_name].beta.requires_grad_(True)


def delete_adapter(model, adapter_name):
    """Remove adapter `adapter_name` from every layer; a layer left without adapters becomes its
    base layer again."""
    for name, layer in adapted_modules(model).items():
        if adapter_name in layer.adapters:
            layer.delete_adapter(adapter_name)
        if not layer.adapters:
            replace_module(model, name, layer.base)


def unload(model):
    """Remove every adapter (unmerging merged ones): the model's own layers come back, the very
    same module objects. Their trainable flags are the caller's to restore."""
    for name, layer in adapted_modules(model).items():
        if layer.merged_adapter is not None:
            layer.unmerge()
        replace_module(model, name, layer.base)
    return model
