"""NOLA adapters for real models: injection, checkpoints, merging and LoRA export
(docs/adapters.md)."""

from ..official_rng import GPU_LAYOUTS, CudaLayout
from .bank import load_adapters
from .base_layer import NotMergeableError
from .checkpoint import load_adapter, save_adapter
from .checkpoint_file import AdapterFileError, AdapterMismatchError, UnsignedCheckpointWarning
from .config import AdapterConfig
from .factor_cache import FactorCacheSettings, set_factor_cache
from .grouping import group_generation
from .inject import adapted_modules, delete_adapter, inject, set_active_adapter, unload
from .layer import NOLALinear
from .merge import merge_adapter, merge_and_unload, unmerge_adapter
from .official import (
    OFFICIAL_GPT2_SCALING,
    OfficialAdapter,
    gpt2_factors,
    load_official,
    merge_factors,
    official_factors,
    strip_peft_prefix,
)
from .peft_export import export_peft_lora, write_peft_lora
from .seeds import derive_seed

__all__ = [
    "GPU_LAYOUTS",
    "OFFICIAL_GPT2_SCALING",
    "AdapterConfig",
    "AdapterFileError",
    "AdapterMismatchError",
    "CudaLayout",
    "FactorCacheSettings",
    "NOLALinear",
    "NotMergeableError",
    "OfficialAdapter",
    "UnsignedCheckpointWarning",
    "adapted_modules",
    "delete_adapter",
    "derive_seed",
    "export_peft_lora",
    "gpt2_factors",
    "group_generation",
    "inject",
    "load_adapter",
    "load_adapters",
    "load_official",
    "merge_adapter",
    "merge_and_unload",
    "merge_factors",
    "official_factors",
    "save_adapter",
    "set_active_adapter",
    "set_factor_cache",
    "strip_peft_prefix",
    "unload",
    "unmerge_adapter",
    "write_peft_lora",
]
