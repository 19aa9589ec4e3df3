"""Fold adapters into the base weights and back, model-wide: scaling * B A, with A and B mixed once
in float32, added to each weight and rounded once to its dtype. Every layer is checked before the
first weight changes, so a refused call (a quantized base, an unavailable backend) changes
nothing."""

from ..validation import check_module
from .copied import copied_modules
from .grouping import ungroup
from .inject import adapted_modules, replace_module
from .layer import check_foldable


def _layers(model, wanted):
    check_module("model", model)
    layers = {name: layer for name, layer in adapted_modules(model).items() if wanted(layer)}
    for name, layer in layers.items():
        check_foldable(name, layer)
    return layers


def _to_merge(layer):
    return layer.active_adapter is not None and layer.merged_adapter is None


def merge_and_unload(model):
    """Fold the active adapter into every base weight and drop the adapters and grouped
    generation: a plain model with no NOLA layers left (what inference servers take). A module
    trained whole (modules_to_save) is replaced by the active adapter's copy."""
    to_merge = _layers(model, _to_merge)
    for layer in to_merge.values():
        layer.merge()
    ungroup(model)
    for name, layer in adapted_modules(model).items():
        replace_module(model, name, layer.base_layer)
    for name, copied in copied_modules(model).items():
        replace_module(model, name, copied.active_module)
    return model


def merge_adapter(model):
    """Fold the active adapter into the base weights of every adapted layer (reversible)."""
    to_merge = _layers(model, _to_merge)
    merged = [name for name, layer in adapted_modules(model).items() if layer.merged_adapter is not None]
    if merged:
        raise RuntimeError(f"already merged: {', '.join(merged)} (unmerge_adapter first)")
    for layer in to_merge.values():
        layer.merge()


def unmerge_adapter(model):
    """Undo merge_adapter."""
    for layer in _layers(model, lambda layer: layer.merged_adapter is not None).values():
        layer.unmerge()
