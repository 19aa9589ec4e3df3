"""Official NOLA checkpoints (github UCDvision/NOLA): read them as the official scripts write them,
rebuild their bases as the official code drew them (nola_kernels/official_rng.py) and mix them
into plain LoRA factors, which then run, merge and export like any LoRA."""

import dataclasses
import json
import math
import re
from pathlib import Path

import torch

from ..official_rng import GENERATOR, GPU_LAYOUTS, check_uniform_rule, official_mix, resolve_layout
from ..validation import check_real
from .base_layer import add_to_weight, features, mergeable_weight
from .checkpoint_file import AdapterFileError

_FACTOR_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<role>[AB])\.(?P<field>coefficients|seed|weight)$")
# What gpt2_ft.py wraps its state dict in, and the prefix DistributedDataParallel gives its keys.
_GPT2_WRAPPER_KEY = "model_state_dict"
_DDP_PREFIX = "module."
# A PEFT folder of the official LLaMA runs (their vendored PEFT 0.4).
_CONFIG_FILE = "adapter_config.json"
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# The scaling (lora_alpha / rank) of the official GPT-2 scripts, which their files do not store.
OFFICIAL_GPT2_SCALING = {"GPT-2 M": 8 / 8, "GPT-2 L": 2 / 8}


def _load_state_dict(path):
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors', pickle's and the OS's errors alike
        raise AdapterFileError(f"cannot read {path} as a state dict: {error}") from error


def _official_state(source):
    """The flat {key: tensor} of an official checkpoint: gpt2_ft.py saves {"model_state_dict":
    state}, with keys prefixed "module." when the model was wrapped in DistributedDataParallel
    (its launcher always wraps it)."""
    if set(source) == {_GPT2_WRAPPER_KEY} and isinstance(source[_GPT2_WRAPPER_KEY], dict):
        source = source[_GPT2_WRAPPER_KEY]
    if source and all(key.startswith(_DDP_PREFIX) for key in source):
        source = {key.removeprefix(_DDP_PREFIX): value for key, value in source.items()}
    return source


def read_official_checkpoint(source):
    """{module prefix: {"A": {...}, "B": {...}}} with each factor's coefficients, seed and dense
    weight, from a state dict or a file (.bin/.pt via torch.load, .safetensors), as the official
    GPT-2 and LLaMA scripts write them; other keys (a full model's weights) are ignored."""
    if not isinstance(source, dict):
        source = _load_state_dict(Path(source))
    modules = {}
    for key, tensor in _official_state(source).items():
        match = _FACTOR_KEY.fullmatch(key)
        if match:
            modules.setdefault(match["module"], {}).setdefault(match["role"], {})[match["field"]] = tensor
    incomplete = [
        f"{name}.lora_{role}"
        for name, roles in modules.items()
        for role in "AB"
        if len(roles.get(role, {})) != 3
    ]
    if incomplete or not modules:
        raise ValueError(
            "not an official NOLA checkpoint: every lora_A and lora_B needs coefficients, seed and weight"
            + (f"; incomplete: {', '.join(incomplete)}" if incomplete else "")
        )
    for name, roles in modules.items():
        for role, fields in roles.items():
            _check_fields(f"{name}.lora_{role}", fields)
    return modules


def _check_fields(prefix, fields):
    seed, coefficients, weight = fields["seed"], fields["coefficients"], fields["weight"]
    if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype.is_complex or int(seed.reshape(-1)[0]) < 0:
        raise ValueError(f"{prefix}.seed must hold one non-negative integer, got {seed.dtype} of shape {tuple(seed.shape)}")
    if coefficients.dim() != 1 or coefficients.numel() == 0 or not coefficients.dtype.is_floating_point:
        raise ValueError(f"{prefix}.coefficients must be a non-empty 1-D float tensor, got {tuple(coefficients.shape)}")
    if weight.dim() != 2 or 0 in weight.shape or not weight.dtype.is_floating_point:
        raise ValueError(f"{prefix}.weight must be a 2-D float matrix, got {tuple(weight.shape)}")


_LAYOUT_REQUIRED = object()


def _checked_layout(layout):
    if layout is _LAYOUT_REQUIRED:
        raise TypeError(
            "layout is required: an official checkpoint's bases are the numbers torch drew on the "
            "training device, and they differ between GPU models and the CPU. Pass the training "
            f"GPU (layout='A100', one of {sorted(GPU_LAYOUTS)}, or a CudaLayout), or "
            f"layout={GENERATOR!r} to draw with torch's own generator on `device`"
        )
    return resolve_layout(layout)


def official_factors(source, *, layout=_LAYOUT_REQUIRED, device="cpu", dtype=torch.float32, uniform_rule="current"):
    """{module prefix: (A (rank, in), B (out, rank))} in float32: each factor's dense weight plus
    its mixed basis, the basis drawn as `official_basis` says (in `dtype`: bfloat16 for the
    official LLaMA runs, under `uniform_rule`). The LoRA scaling is not applied: see
    load_official. Everything is checked before any basis is generated."""
    layout = _checked_layout(layout)
    check_uniform_rule(uniform_rule, layout)
    factors = {}
    for name, roles in read_official_checkpoint(source).items():
        mixed = []
        for role in "AB":
            fields = roles[role]
            weight = fields["weight"].to(device, torch.float32)
            seed = int(fields["seed"].reshape(-1)[0])
            mix = official_mix(
                fields["coefficients"], seed, tuple(weight.shape), layout=layout, device=device, dtype=dtype,
                uniform_rule=uniform_rule,
            )  # fmt: skip
            mixed.append(weight + mix)
        factors[name] = tuple(mixed)
    return factors


@dataclasses.dataclass(frozen=True)
class OfficialAdapter:
    """An official checkpoint as LoRA: {module prefix: (A, B)} in float32, and the scaling
    (lora_alpha / rank) the official forward multiplies B A x by."""

    factors: dict
    scaling: float


def load_official(
    source, *, layout=_LAYOUT_REQUIRED, scaling=None, device="cpu", dtype=torch.float32, uniform_rule="current"
):
    """An official checkpoint, read as the official scripts write it, as an OfficialAdapter.

    `source`: a GPT-2 file as gpt2_ft.py saves it (model.<step>.pt), a state dict, or an official
    LLaMA folder (adapter_config.json beside adapter_model.bin / .safetensors). The folder's
    config holds lora_alpha and r: the scaling is read from it (a `scaling` that disagrees is
    refused). GPT-2 files do not store it: `scaling` is then required (the official scripts used
    lora_alpha / rank = 1.0 for GPT-2 M and 0.25 for GPT-2 L, OFFICIAL_GPT2_SCALING)."""
    layout = _checked_layout(layout)
    check_uniform_rule(uniform_rule, layout)
    if scaling is not None:
        scaling = check_real("scaling", scaling, finite=True)
    weights = source
    if not isinstance(source, dict) and Path(source).is_dir():
        stored, weights = _read_peft_folder(Path(source))
        if scaling is not None and not math.isclose(scaling, stored, rel_tol=1e-12):
            raise ValueError(
                f"scaling={scaling!r} disagrees with {Path(source) / _CONFIG_FILE}: "
                f"lora_alpha / r = {stored!r}"
            )
        scaling = stored
    elif scaling is None:
        raise ValueError(
            "scaling is required: official GPT-2 checkpoints do not store it (lora_alpha / rank of "
            f"the training run; the official scripts used {OFFICIAL_GPT2_SCALING})"
        )
    factors = official_factors(weights, layout=layout, device=device, dtype=dtype, uniform_rule=uniform_rule)
    return OfficialAdapter(factors, scaling)


def _read_peft_folder(folder):
    """(lora_alpha / r, weight file) of an official LLaMA adapter folder."""
    config_path = folder / _CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise AdapterFileError(f"cannot read {config_path}: {error}") from error
    if not isinstance(config, dict) or not config.get("use_nola"):
        raise ValueError(f"{config_path} is not an official NOLA adapter config (use_nola is not true)")
    try:
        lora_alpha = check_real("lora_alpha", config["lora_alpha"], finite=True)
        rank = check_real("r", config["r"], finite=True)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{config_path}: needs numbers lora_alpha and r ({error})") from error
    if rank <= 0:
        raise ValueError(f"{config_path}: r must be positive, got {config['r']!r}")
    scaling = lora_alpha / rank
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return scaling, folder / name
    raise AdapterFileError(f"{folder} has no {' or '.join(_WEIGHT_FILES)}")


def gpt2_factors(factors, embed):
    """Official GPT-2 factors on transformers' GPT-2 modules: nola_query and nola_value of block i
    as one LoRA of rank 2r on the fused attn.c_attn (output columns q | k | v, `embed` each), and
    the MLP adapters of --lora_mlp runs (mlp.p1_nola, mlp.p2_nola) on mlp.c_fc and mlp.c_proj."""
    pattern = re.compile(r"(?:.*\.)?h\.(\d+)\.(?:attn\.nola_(query|value)|mlp\.(p1|p2)_nola)")
    attention, mapped = {}, {}
    for name, pair in factors.items():
        match = pattern.fullmatch(name)
        if not match:
            raise ValueError(
                f"{name} is not an official GPT-2 adapter (attn.nola_query/nola_value, mlp.p1_nola/p2_nola)"
            )
        block = int(match[1])
        if match[2]:
            attention.setdefault(block, {})[match[2]] = pair
        else:
            target = {"p1": "c_fc", "p2": "c_proj"}[match[3]]
            mapped[f"transformer.h.{block}.mlp.{target}"] = pair
    for block, parts in sorted(attention.items()):
        missing = {"query", "value"} - set(parts)
        if missing:
            raise ValueError(f"block {block} has nola_{missing.pop()} missing: the fused c_attn needs both")
        (a_q, b_q), (a_v, b_v) = parts["query"], parts["value"]
        rank = a_q.shape[0]
        b = torch.zeros(3 * embed, 2 * rank, dtype=b_q.dtype, device=b_q.device)
        b[:embed, :rank], b[2 * embed :, rank:] = b_q, b_v
        mapped[f"transformer.h.{block}.attn.c_attn"] = (torch.cat([a_q, a_v]), b)
    return dict(sorted(mapped.items(), key=lambda item: (int(item[0].split(".")[2]), item[0])))


def strip_peft_prefix(factors, prefix="base_model.model."):
    """Official LLaMA names (PEFT's base_model.model.<name>) as the model's own module names."""
    return {name.removeprefix(prefix): pair for name, pair in factors.items()}


def merge_factors(model, factors, scaling):
    """Add scaling * B A to the weight of each named module of `model` (a plain model). Every
    module and factor pair is checked before the first weight changes."""
    scaling = check_real("scaling", scaling, finite=True)
    modules = {name: _merge_target(model, name, pair) for name, pair in factors.items()}
    for name, (a, b) in factors.items():
        add_to_weight(modules[name], scaling * (b.float() @ a.float()))


def _merge_target(model, name, pair):
    try:
        module = model.get_submodule(name)
    except AttributeError as error:
        raise ValueError(f"factors: the model has no module {name!r}") from error
    mergeable_weight(module)
    in_features, out_features = features(module, name)
    a, b = pair
    if (
        a.dim() != 2
        or b.dim() != 2
        or a.shape[0] != b.shape[1]
        or (b.shape[0], a.shape[1]) != (out_features, in_features)
    ):
        raise ValueError(
            f"factors[{name!r}] must be A (rank, {in_features}) and B ({out_features}, rank), "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return module
