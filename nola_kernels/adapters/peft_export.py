"""Export to plain LoRA in PEFT's format (adapter_model.safetensors + adapter_config.json), which
PEFT loads unchanged and vLLM serves: once mixed, NOLA's factors A and B are exactly a LoRA."""

import json
from pathlib import Path

import torch

from .atomic import atomic_write_bytes
from .base_layer import is_transposed
from .inject import adapted_modules

PEFT_PREFIX = "base_model.model."


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

    directory = Path(directory)
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
    """Mix adapter `adapter_name` of every adapted layer once (float32) and write it as a PEFT LoRA."""
    layers = {n: m for n, m in adapted_modules(model).items() if adapter_name in m.adapters}
    if not layers:
        raise KeyError(f"the model has no adapter named {adapter_name!r}")
    configs = {layer.adapters[adapter_name].config for layer in layers.values()}
    transposed = {is_transposed(layer.base) for layer in layers.values()}
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
