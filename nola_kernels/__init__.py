"""nola_kernels: NOLA adapters whose random bases are generated on the fly (NOLA-Philox v1).

from nola_kernels import nola_basis, nola_mix, nola_project, nola_matmul
"""

from .api import nola_basis, nola_matmul, nola_mix, nola_project
from .backends import BackendUnavailableError, available_backends
from .basis import chunk_budget, set_chunk_budget

SPEC_VERSION = "NOLA-Philox v1"
__version__ = "0.1.0"

__all__ = [
    "SPEC_VERSION",
    "BackendUnavailableError",
    "available_backends",
    "chunk_budget",
    "nola_basis",
    "nola_matmul",
    "nola_mix",
    "nola_project",
    "set_chunk_budget",
]
