"""Adapter checkpoints: one safetensors file holding only the coefficients (alpha and beta of
each adapted module, float32) with the adapter's JSON config in its header. The bases follow from
the seeds, so a module costs 4 * (k + l) bytes plus its header entries. See docs/adapters.md."""

import json

import torch

from .. import SPEC_VERSION
from .atomic import atomic_write_bytes
from .config import AdapterConfig
from .inject import adapted_modules, delete_adapter, inject

FORMAT = "nola_kernels adapter 1"
CONFIG_KEY = "nola_config"


class AdapterMismatchError(ValueError):
    """A checkpoint does not fit the model; the message lists every mismatch."""


def _adapters(model, adapter_name):
    return {
        name: layer.adapters[adapter_name]
        for name, layer in adapted_modules(model).items()
        if adapter_name in layer.adapters
    }


def _module_record(adapter):
    return {
        "in_features": adapter.in_features,
        "out_features": adapter.out_features,
        "seed_a": adapter.seed_a,
        "seed_b": adapter.seed_b,
    }


def save_adapter(model, path, adapter_name="default"):
    """Write adapter `adapter_name` of `model` to `path` atomically; returns the file size."""
    adapters = _adapters(model, adapter_name)
    if not adapters:
        raise KeyError(f"the model has no adapter named {adapter_name!r}")
    configs = {adapter.config for adapter in adapters.values()}
    if len(configs) != 1:
        raise ValueError(f"adapter {adapter_name!r} has different settings on different layers: {configs}")
    header = {
        "format": FORMAT,
        "spec_version": SPEC_VERSION,
        "config": configs.pop().to_dict(),
        "modules": {name: _module_record(adapter) for name, adapter in adapters.items()},
    }
    tensors = {}
    for name, adapter in adapters.items():
        tensors[f"{name}.alpha"] = adapter.alpha.detach().float().cpu().contiguous()
        tensors[f"{name}.beta"] = adapter.beta.detach().float().cpu().contiguous()
    from safetensors.torch import save  # imported when used: the kernels import without it

    data = save(tensors, metadata={CONFIG_KEY: json.dumps(header, sort_keys=True)})
    atomic_write_bytes(path, data)
    return len(data)


def read_adapter(path):
    """(header dict, {key: tensor}) of a checkpoint file."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as file:
        metadata = file.metadata() or {}
        if CONFIG_KEY not in metadata:
            raise AdapterMismatchError(
                f"{path} is not a nola_kernels adapter (no {CONFIG_KEY!r} in its header)"
            )
        return json.loads(metadata[CONFIG_KEY]), {key: file.get_tensor(key) for key in file.keys()}


def load_adapter(model, path, adapter_name="default"):
    """Load the adapter saved at `path` into `model` as `adapter_name`: into the layers that have
    it, or, if the model has none, into layers injected from the saved config (the master seed
    rebuilds the same bases; the saved module list is then checked). Every mismatch is named in
    one AdapterMismatchError, and then nothing is loaded (and nothing injected). Returns the
    loaded module names."""
    header, tensors = read_adapter(path)
    try:
        config = AdapterConfig(**header["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise AdapterMismatchError(f"{path} has an unreadable adapter config: {error}") from None
    injected = not _adapters(model, adapter_name)
    if injected:
        if config.seed is None:
            raise AdapterMismatchError(
                f"{path} was saved from layers with explicit seeds (no master seed): "
                f"add adapter {adapter_name!r} to the model first"
            )
        inject(model, adapter_name=adapter_name, **header["config"])
    adapters = _adapters(model, adapter_name)
    problems = _mismatches(header, tensors, config, adapters)
    if problems:
        if injected:
            delete_adapter(model, adapter_name)
        raise AdapterMismatchError(f"cannot load {path} into the model:\n  - " + "\n  - ".join(problems))
    with torch.no_grad():
        for name, adapter in adapters.items():
            adapter.alpha.copy_(tensors[f"{name}.alpha"])
            adapter.beta.copy_(tensors[f"{name}.beta"])
    return list(adapters)


def _mismatches(header, tensors, config, adapters):
    problems = []
    if header.get("format") != FORMAT:
        problems.append(f"format {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("spec_version") != SPEC_VERSION:
        problems.append(
            f"spec version {header.get('spec_version')!r}, this library implements {SPEC_VERSION!r}"
        )
    saved = header.get("modules", {})
    for name in sorted(saved.keys() - adapters.keys()):
        problems.append(f"module {name}: in the checkpoint, not adapted in the model")
    for name in sorted(adapters.keys() - saved.keys()):
        problems.append(f"module {name}: adapted in the model, not in the checkpoint")
    for name in sorted(saved.keys() & adapters.keys()):
        adapter = adapters[name]
        problems += [
            f"module {name}: {key} {value} in the checkpoint, {current} in the model"
            for key, value in saved[name].items()
            if (current := _module_record(adapter).get(key)) != value
        ]
        for setting in ("rank", "k", "l", "distribution", "scaling"):
            if getattr(config, setting) != getattr(adapter.config, setting):
                problems.append(
                    f"module {name}: {setting} {getattr(config, setting)!r} in the checkpoint, "
                    f"{getattr(adapter.config, setting)!r} in the model"
                )
        for role, count in (("alpha", adapter.config.k), ("beta", adapter.config.l)):
            tensor = tensors.get(f"{name}.{role}")
            if tensor is None or tuple(tensor.shape) != (count,) or tensor.dtype != torch.float32:
                found = "missing" if tensor is None else f"{tuple(tensor.shape)} {tensor.dtype}"
                problems.append(f"module {name}: tensor {role} is {found}, expected ({count},) float32")
    return problems
