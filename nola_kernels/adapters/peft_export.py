"""Export to plain LoRA in PEFT's format (adapter_model.safetensors + adapter_config.json), which
PEFT loads unchanged and vLLM serves: once mixed, NOLA's factors A and B are exactly a LoRA."""

import json
import os
from pathlib import Path

import torch

from ..validation import check_bool, check_int, check_module, check_name, check_real
from .atomic import atomic_write_bytes
from .base_layer import is_transposed
from .inject import adapted_modules

PEFT_PREFIX = "base_model.model."
FILES = ("adapter_model.safetensors", "adapter_config.json")


def check_export_directory(directory):
    """`directory` as a Path that is, or can be made, a folder: an existing file there (or above
    it) is refused before any work. An existing folder is fine: the two files in it are replaced,
    as PEFT's save_pretrained replaces them."""
    if not isinstance(directory, str | os.PathLike):
        raise TypeError(
            f"directory must be a str or os.PathLike, got {type(directory).__name__} {directory!r}"
        )
    directory = Path(directory)
    for folder in (directory, *directory.parents):
        if folder.exists():
            if not folder.is_dir():
                raise FileExistsError(
                    f"directory {str(directory)!r}: {str(folder)!r} exists and is not a folder"
                )
            break
    for name in FILES:
        if (directory / name).is_dir():
            raise IsADirectoryError(f"directory {str(directory)!r}: {name} in it is a folder")
    return directory


def _check_options(dtype, base_model_name_or_path):
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if base_model_name_or_path is not None and not isinstance(base_model_name_or_path, str):
        raise TypeError(f"base_model_name_or_path must be a str or None, got {base_model_name_or_path!r}")


def _check_factors(factors, rank):
    if not isinstance(factors, dict) or not factors:
        raise ValueError(
            f"factors must be a non-empty dict {{module name: (A, B)}}, got {type(factors).__name__}"
        )
    for name, pair in factors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"factors: module names must be non-empty str, got {name!r}")
        if not (
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and all(isinstance(t, torch.Tensor) for t in pair)
        ):
            raise TypeError(f"factors[{name!r}] must be a pair of tensors (A, B)")
        a, b = pair
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise ValueError(
                f"factors[{name!r}] must be A (rank, in) and B (out, rank) with rank {rank}, "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )


def write_peft_lora(
    directory,
    factors,
    *,
    rank,
    lora_alpha,
    fan_in_fan_out=False,
    base_model_name_or_path=None,
    dtype=torch.float32,
):
    """Write {module name: (A (rank, in), B (out, rank))} as a PEFT LoRA adapter with scaling
    lora_alpha / rank. fan_in_fan_out: the base layers store (in, out) weights (GPT-2's Conv1D)."""
    from safetensors.torch import save  # imported when used: the kernels import without it

    directory = check_export_directory(directory)
    rank = check_int("rank", rank, 1)
    lora_alpha = check_real("lora_alpha", lora_alpha, finite=True)
    check_bool("fan_in_fan_out", fan_in_fan_out)
    _check_options(dtype, base_model_name_or_path)
    _check_factors(factors, rank)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, b) in factors.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.detach().to("cpu", dtype).contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.detach().to("cpu", dtype).contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": lora_alpha,
        "target_modules": list(factors),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    atomic_write_bytes(directory / "adapter_model.safetensors", save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(directory / "adapter_config.json", json.dumps(config, indent=2).encode())


def export_peft_lora(
    model, directory, adapter_name="default", base_model_name_or_path=None, dtype=torch.float32
):
    """Mix adapter `adapter_name` of every adapted layer once (float32) and write it as a PEFT LoRA
    into `directory` (made if needed; its two files replaced if there). Everything, the target
    included, is checked before the mixing."""
    check_module("model", model)
    check_export_directory(directory)
    check_name("adapter_name", adapter_name)
    _check_options(dtype, base_model_name_or_path)
    layers = {n: m for n, m in adapted_modules(model).items() if adapter_name in m.adapters}
    if not layers:
        raise KeyError(f"the model has no adapter named {adapter_name!r}")
    configs = {layer.adapters[adapter_name].config for layer in layers.values()}
    transposed = {is_transposed(layer.base_layer) for layer in layers.values()}
    if len(configs) != 1 or len(transposed) != 1:
        raise ValueError("a PEFT LoRA has one rank, scaling and weight layout: export layers that share them")
    config = configs.pop()
    factors = {name: layer.adapters[adapter_name].factors(layer.backend) for name, layer in layers.items()}
    write_peft_lora(
        directory,
        factors,
        rank=config.rank,
        lora_alpha=config.scaling * config.rank,
        fan_in_fan_out=transposed.pop(),
        base_model_name_or_path=base_model_name_or_path,
        dtype=dtype,
    )
