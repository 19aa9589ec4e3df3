"""NOLA adapters for real models: injection, checkpoints, merging and LoRA export
(docs/adapters.md)."""

from .base_layer import NotMergeableError
from .checkpoint import AdapterMismatchError, load_adapter, save_adapter
from .config import AdapterConfig
from .inject import adapted_modules, delete_adapter, inject, set_active_adapter, unload
from .layer import NOLALinear
from .merge import merge_adapter, merge_and_unload, unmerge_adapter
from .peft_export import export_peft_lora
from .seeds import derive_seed

__all__ = [
    "AdapterConfig",
    "AdapterMismatchError",
    "NOLALinear",
    "NotMergeableError",
    "adapted_modules",
    "delete_adapter",
    "derive_seed",
    "export_peft_lora",
    "inject",
    "load_adapter",
    "merge_adapter",
    "merge_and_unload",
    "save_adapter",
    "set_active_adapter",
    "unload",
    "unmerge_adapter",
]
