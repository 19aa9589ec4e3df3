"""nola_kernels: NOLA adapters whose random bases are generated on the fly (NOLA-Philox v1.1).

from nola_kernels import nola_basis, nola_mix, nola_project, nola_matmul
from nola_kernels import nola_mix_grouped, nola_project_grouped     # G rows over one family
from nola_kernels import inject, save_adapter, load_adapter, merge_and_unload   # adapters
from nola_kernels import row_adapters, load_adapters, set_factor_cache         # serving
from nola_kernels import group_generation   # one generation pass per shared basis family
"""

from .adapters import (
    AdapterConfig,
    AdapterFileError,
    AdapterMismatchError,
    NOLALinear,
    NotMergeableError,
    adapted_modules,
    delete_adapter,
    export_peft_lora,
    group_generation,
    inject,
    load_adapter,
    load_adapters,
    merge_adapter,
    merge_and_unload,
    save_adapter,
    set_active_adapter,
    set_factor_cache,
    unload,
    unmerge_adapter,
)
from .api import nola_basis, nola_matmul, nola_mix, nola_mix_grouped, nola_project, nola_project_grouped
from .backends import BackendUnavailableError, available_backends
from .basis import chunk_budget, set_chunk_budget
from .serving import row_adapters
from .spec_version import SPEC_VERSION

__version__ = "0.1.0"

__all__ = [
    "SPEC_VERSION",
    "AdapterConfig",
    "AdapterFileError",
    "AdapterMismatchError",
    "BackendUnavailableError",
    "NOLALinear",
    "NotMergeableError",
    "adapted_modules",
    "available_backends",
    "chunk_budget",
    "delete_adapter",
    "export_peft_lora",
    "group_generation",
    "inject",
    "load_adapter",
    "load_adapters",
    "merge_adapter",
    "merge_and_unload",
    "nola_basis",
    "nola_matmul",
    "nola_mix",
    "nola_mix_grouped",
    "nola_project",
    "nola_project_grouped",
    "row_adapters",
    "save_adapter",
    "set_active_adapter",
    "set_chunk_budget",
    "set_factor_cache",
    "unload",
    "unmerge_adapter",
]
