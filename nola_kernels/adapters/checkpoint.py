"""Adapter checkpoints: one safetensors file holding only the coefficients (alpha and beta of
each adapted module, float32) with the adapter's JSON config and a digest in its header
(checkpoint_file.py). The bases follow from the seeds, so a module costs 4 * (k + l) bytes plus
its header entries. See docs/adapters.md.

load_adapter plans first: the file is checked completely, then against the model (and, for a
model without the adapter, the injection is planned without doing it); only then does it inject
and copy the coefficients. A refused load leaves the model as it was."""

import dataclasses
import os
from pathlib import Path

import torch

from ..spec_version import spec_version_for
from ..validation import check_bool, check_module, check_name
from .atomic import atomic_write_bytes
from .checkpoint_file import (
    CONFIG_FIELDS,
    FORMAT,
    RECORD_FIELDS,
    ROLES,
    AdapterMismatchError,
    encode_checkpoint,
    read_checkpoint,
)
from .copied import CopiedModule, adapter_copies, copy_state
from .inject import adapted_modules, apply_injection, plan_injection

COMPARED_SETTINGS = tuple(field for field in CONFIG_FIELDS if field != "target_modules")
# Module names a wrapper puts into the model's: FSDP1's, activation checkpointing's, torch.compile's.
WRAPPER_NAMES = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def own_name(name):
    """A module's name as the model had it before wrappers: a checkpoint saved from a wrapped
    model loads into the plain one, and the reverse."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_NAMES)


def _adapted(model):
    return {own_name(name): layer for name, layer in adapted_modules(model).items()}


def _copies(model, adapter_name):
    return {own_name(name): module for name, module in adapter_copies(model, adapter_name).items()}


def _adapters(model, adapter_name):
    return {
        name: layer.adapters[adapter_name]
        for name, layer in _adapted(model).items()
        if adapter_name in layer.adapters
    }


def _module_record(adapter):
    return {field: getattr(adapter, field) for field in RECORD_FIELDS}


def _check_save_path(path):
    """True when `path` is an existing folder (PEFT's folder is written), False for a file path."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    path = Path(path)
    if path.is_dir():
        return True
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path {str(path)!r}: its folder does not exist")
    return False


def save_adapter(model, path, adapter_name="default"):
    """Write adapter `adapter_name` of `model` to `path` atomically: a file path gets this
    library's one-file checkpoint, an existing folder PEFT's adapter_config.json and
    adapter_model.safetensors (NOLA as a PEFT method: nola_kernels.peft, needs peft). The copies
    modules_to_save made for this adapter are saved whole beside the coefficients. Returns the
    bytes written."""
    check_module("model", model)
    check_name("adapter_name", adapter_name)
    to_folder = _check_save_path(path)
    adapters = _adapters(model, adapter_name)
    if not adapters:
        raise KeyError(f"the model has no adapter named {adapter_name!r}")
    configs = {adapter.config for adapter in adapters.values()}
    if len(configs) != 1:
        raise ValueError(f"adapter {adapter_name!r} has different settings on different layers: {configs}")
    config = configs.pop()
    copies = _copies(model, adapter_name)
    if config.modules_to_save is not None and not copies:
        raise ValueError(
            f"adapter {adapter_name!r} was made with modules_to_save={list(config.modules_to_save)!r}, "
            "but the model holds no copies that inject made (a PeftModel keeps its own: save it with "
            "save_pretrained)"
        )
    if to_folder:
        from ..peft import write_adapter_folder  # imported when used: it needs peft

        return write_adapter_folder(path, config, adapters, copies)
    header = {
        "format": FORMAT,
        "spec_version": spec_version_for(config.distribution),
        "config": config.to_dict(),
        "modules": {name: _module_record(adapter) for name, adapter in adapters.items()},
    }
    tensors = {
        f"{name}.{role}": getattr(adapter, role).detach().float().cpu().contiguous()
        for name, adapter in adapters.items()
        for role in ROLES
    }
    tensors.update(copy_state(copies))
    data = encode_checkpoint(header, tensors)
    atomic_write_bytes(path, data)
    return len(data)


@dataclasses.dataclass(frozen=True)
class Target:
    """A layer a load writes into, as the model has it or as the planned injection will make it."""

    record: dict
    config: object
    merged: bool = False


def load_adapter(model, path, adapter_name="default", *, allow_nonfinite=False):
    """Load the adapter saved at `path` into `model` as `adapter_name`: into the layers that have
    it, or, if the model has none, into layers injected from the saved config (the master seed
    rebuilds the same bases; the saved module list is then checked). A file that is unreadable,
    malformed, incomplete or corrupted raises AdapterFileError; a file that does not fit the
    model raises AdapterMismatchError naming every mismatch. Either way the model is unchanged.
    NaN or infinite coefficients are refused unless allow_nonfinite=True. Modules the file saved
    whole (modules_to_save) load into the adapter's copies, which must have the same state dict
    keys, shapes and dtypes. Returns the loaded (adapted) module names."""
    check_module("model", model)
    check_name("adapter_name", adapter_name)
    check_bool("allow_nonfinite", allow_nonfinite)
    checkpoint = read_checkpoint(path, allow_nonfinite)
    targets = _existing_targets(model, adapter_name)
    plan = None if targets else _plan_injection(model, checkpoint, adapter_name)
    copies = _copies(model, adapter_name) if plan is None else _planned_copies(plan)
    targets = targets or _planned_targets(plan)
    problems = _mismatches(checkpoint, targets) + _copy_mismatches(checkpoint, copy_state(copies))
    if problems:
        raise AdapterMismatchError(f"cannot load {path} into the model:\n  - " + "\n  - ".join(problems))
    if plan is not None:
        apply_injection(model, plan)
    adapters = _adapters(model, adapter_name)
    for name, adapter in adapters.items():
        copy_coefficients(adapter, checkpoint, name)
    for name, module in _copies(model, adapter_name).items():
        module.load_state_dict({key: checkpoint.tensors[f"{name}.{key}"] for key in module.state_dict()})
    for layer in adapted_modules(model).values():
        layer.factor_cache.drop(adapter_name)
    return list(adapters)


def copy_coefficients(adapter, checkpoint, module_name):
    with torch.no_grad():
        for role in ROLES:
            getattr(adapter, role).copy_(checkpoint.tensors[f"{module_name}.{role}"])


def _plan_injection(model, checkpoint, adapter_name):
    config = checkpoint.config
    if config.seed is None:
        raise AdapterMismatchError(
            f"{checkpoint.path} was saved from layers with explicit seeds (no master seed): "
            f"add adapter {adapter_name!r} to the model first"
        )
    settings = {field: getattr(config, field) for field in COMPARED_SETTINGS}
    try:
        return plan_injection(model, config.target_modules, adapter_name=adapter_name, **settings)
    except (TypeError, ValueError, RuntimeError) as error:
        raise AdapterMismatchError(
            f"cannot inject the adapter of {checkpoint.path} into the model: {error}"
        ) from error


def _existing_targets(model, adapter_name):
    targets = {}
    for name, layer in _adapted(model).items():
        if adapter_name in layer.adapters:
            adapter = layer.adapters[adapter_name]
            targets[name] = Target(
                _module_record(adapter), adapter.config, layer.merged_adapter == adapter_name
            )
    return targets


def _planned_targets(plan):
    return {
        own_name(p.name): Target({field: getattr(p, field) for field in RECORD_FIELDS}, plan.config)
        for p in plan.placements
    }


def _planned_copies(plan):
    # The copy a planned injection would make has the state dict of the module it copies.
    return {
        own_name(name): module.original_module if isinstance(module, CopiedModule) else module
        for name, module in plan.copies
    }


def _copy_mismatches(checkpoint, expected):
    """The file's tensors other than coefficients against `expected`, the state of the model's
    copies ({key: tensor})."""
    coefficients = {f"{name}.{role}" for name in checkpoint.modules for role in ROLES}
    saved = {key: value for key, value in checkpoint.tensors.items() if key not in coefficients}
    problems = _one_sided(
        "tensor",
        saved,
        expected,
        "in the checkpoint, in no module the model trains whole (modules_to_save)",
        "of a module the model trains whole (modules_to_save), not in the checkpoint",
    )
    problems += [
        f"tensor {key}: {tuple(saved[key].shape)} {saved[key].dtype} in the checkpoint, "
        f"{tuple(expected[key].shape)} {expected[key].dtype} in the model"
        for key in sorted(saved.keys() & expected.keys())
        if (saved[key].shape, saved[key].dtype) != (expected[key].shape, expected[key].dtype)
    ]
    return problems


def _one_sided(kind, saved, in_model, only_saved, only_in_model):
    """A message for each key of `saved` that `in_model` lacks, and for the reverse."""
    return [f"{kind} {key}: {only_saved}" for key in sorted(saved.keys() - in_model.keys())] + [
        f"{kind} {key}: {only_in_model}" for key in sorted(in_model.keys() - saved.keys())
    ]


def _mismatches(checkpoint, targets):
    saved = checkpoint.modules
    problems = _one_sided(
        "module", saved, targets, "in the checkpoint, not adapted in the model", "adapted in the model, not in the checkpoint"
    )
    for name in sorted(saved.keys() & targets.keys()):
        target = targets[name]
        problems += [
            f"module {name}: {key} {value} in the checkpoint, {target.record[key]} in the model"
            for key, value in saved[name].items()
            if target.record[key] != value
        ]
        problems += [
            f"module {name}: {setting} {getattr(checkpoint.config, setting)!r} in the checkpoint, "
            f"{getattr(target.config, setting)!r} in the model"
            for setting in COMPARED_SETTINGS
            if getattr(checkpoint.config, setting) != getattr(target.config, setting)
        ]
        if target.merged:
            problems.append(
                f"module {name}: the adapter is merged into the weight (unmerge it before loading)"
            )
    return problems
