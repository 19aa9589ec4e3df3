"""Fold adapters into the base weights and back, model-wide: scaling * B A, with A and B mixed once
in float32, added to each weight and rounded once to its dtype."""

from .inject import adapted_modules, replace_module


def merge_and_unload(model):
    """Fold the active adapter into every base weight and drop the adapters: a plain model with
    no NOLA layers left (what inference servers take)."""
    for name, layer in adapted_modules(model).items():
        if layer.active_adapter is not None and layer.merged_adapter is None:
            layer.merge()
        replace_module(model, name, layer.base)
    return model


def merge_adapter(model):
    """Fold the active adapter into the base weights of every adapted layer (reversible)."""
    for layer in adapted_modules(model).values():
        if layer.active_adapter is not None:
            layer.merge()


def unmerge_adapter(model):
    """Undo merge_adapter."""
    for layer in adapted_modules(model).values():
        if layer.merged_adapter is not None:
            layer.unmerge()
