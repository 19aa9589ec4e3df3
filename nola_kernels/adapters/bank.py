"""An adapter bank: many adapters' coefficients loaded into one model, for serving them side by
side (nola_kernels.row_adapters). Each adapter costs its coefficients, 4 (k + l) bytes per module
(a0 is shared by adapters of one basis family, factor_cache.shared_offset), plus the module
objects holding them; only the adapters in use get factors, in the layers' bounded factor caches.

Every file is read and checked (format, digest, config, shapes) and fitted against the model
before the model changes, as load_adapter does for one; the injection is planned once per
distinct config, so that loading n adapters does not walk the growing model n times."""

import os

from ..validation import check_bool, check_module, check_name
from .checkpoint import (
    AdapterMismatchError,
    _mismatches,
    _plan_injection,
    _planned_targets,
    copy_coefficients,
)
from .checkpoint_file import read_checkpoint
from .inject import adapted_modules, place_adapter


def _check_paths(paths):
    if not isinstance(paths, dict) or not paths:
        raise TypeError(f"paths must be a non-empty dict {{adapter name: path}}, got {type(paths).__name__}")
    for name, path in paths.items():
        check_name("adapter name (a key of paths)", name)
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"paths[{name!r}] must be a str or os.PathLike, got {type(path).__name__}")


def load_adapters(model, paths, *, allow_nonfinite=False):
    """Load the adapter checkpoints `paths` ({adapter name: path}, files written by save_adapter)
    into `model` as new adapters, frozen; each layer's active adapter stays what it was (a layer
    made now has none active). A name the model has already, a file that is not an intact
    checkpoint (AdapterFileError) or does not fit the model (AdapterMismatchError) raises before
    the model changes. Returns the names loaded."""
    check_module("model", model)
    _check_paths(paths)
    check_bool("allow_nonfinite", allow_nonfinite)
    layers = adapted_modules(model)
    taken = sorted({name for layer in layers.values() for name in layer.adapters} & paths.keys())
    if taken:
        raise ValueError(f"paths: the model has adapters named {taken} already (load_adapter reloads one)")
    checkpoints = {name: read_checkpoint(path, allow_nonfinite) for name, path in paths.items()}
    plans = {}
    for name, checkpoint in checkpoints.items():
        if checkpoint.config.modules_to_save:
            raise ValueError(
                f"paths[{name!r}]: {checkpoint.path} holds modules trained whole (modules_to_save="
                f"{list(checkpoint.config.modules_to_save)}), which a bank does not serve: load it with load_adapter"
            )
        if checkpoint.config not in plans:
            plans[checkpoint.config] = _plan_injection(model, checkpoint, name)
        problems = _mismatches(checkpoint, _planned_targets(plans[checkpoint.config]))
        if problems:
            raise AdapterMismatchError(
                f"cannot load {checkpoint.path} into the model:\n  - " + "\n  - ".join(problems)
            )
    active = {name: layer.active_adapter for name, layer in layers.items()}
    for name, checkpoint in checkpoints.items():
        plan = plans[checkpoint.config]
        for placement in plan.placements:
            layer = place_adapter(model, placement, name, plan.config, plan.backend)
            adapter = layer.adapters[name]
            adapter.requires_grad_(False)
            copy_coefficients(adapter, checkpoint, placement.name)
            layer.set_active(active.get(placement.name))
    return list(checkpoints)
