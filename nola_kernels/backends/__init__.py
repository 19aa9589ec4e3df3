"""Backends: each implements the same ops (`mix`, `project`) of the NOLA-Philox v1 contract.

- "torch": pure PyTorch, any device (backends/torch_backend.py).
- "triton": Triton kernels (triton/), not in this build yet.
- "cuda": the compiled CUDA extension (csrc/), not in this build yet.
"""

from . import torch_backend

BACKEND_NAMES = ("torch", "triton", "cuda")
_MODULES = {"torch": torch_backend}
_MISSING = {
    "triton": "the Triton kernels are not part of this build of nola_kernels yet",
    "cuda": "the compiled CUDA extension is not part of this build of nola_kernels yet",
}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here."""


def available_backends(device):
    """Names of the backends that can run on `device`, in the order "auto" prefers them. Today
    only "torch" exists and it runs on every device; the kernel backends will depend on it."""
    return [name for name in ("cuda", "triton", "torch") if name in _MODULES]


def resolve_backend(name, device):
    """The concrete backend name for `name` ("auto" or one of BACKEND_NAMES) on `device`."""
    if name == "auto":
        return available_backends(device)[0]
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {name!r}")
    if name not in _MODULES:
        raise BackendUnavailableError(f"backend {name!r} is not available: {_MISSING[name]}")
    return name


def get_backend(name):
    """The module implementing backend `name` (already resolved)."""
    return _MODULES[name]
