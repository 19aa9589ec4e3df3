"""Backends: each implements the same ops of the NOLA-Philox contract (docs/spec.md).

- "torch": pure PyTorch, any device (backends/torch_backend.py); the reference.
- "cpu": the compiled CPU kernels (csrc/cpu/), on CPU tensors (backends/cpu_backend.py).
- "triton": the Triton kernels (triton/), on CUDA tensors, or on CPU tensors under
  TRITON_INTERPRET=1 (backends/triton_backend.py).
- "cuda": the compiled CUDA extension (csrc/), on CUDA tensors (backends/cuda_backend.py).

A backend module provides:

    unavailable_reason(device) -> str | None      why it cannot run on `device`, None if it can
    emulated(device) -> bool        (optional) it runs there only in an emulator (Triton's CPU
                                    interpreter): usable by name, never chosen by "auto"
    mix(coeffs, seed, stream, rows, cols, scale, distribution) -> (rows, cols) tensor
    project(grad, seed, stream, k, scale, distribution) -> (k,) tensor
    mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution) -> (G, rows, cols) tensor
        coeffs contiguous (G, k); row g is mix(coeffs[g], ...)
    project_grouped(grads, seed, stream, k, scale, distribution) -> (G, k) tensor
        grads contiguous (G, rows, cols); row g is project(grads[g], ...)
        (each generated basis entry is used by all G rows; docs/spec.md, "Grouped mixing and
        projection", says which bits and which precision each backend owes)

(float32 work only: ops.py sends float64 to "torch") and, where it has fused low-rank kernels
(see nola_kernels/ops.py for their contract; spec is a nola_kernels.lowrank.LowRankSpec):

    prefers_fused(shape: LowRankShape) -> bool      (nola_kernels/lowrank.py)
    lowrank_forward(x, alpha, beta, a0, b0, spec) -> (delta, h)
    lowrank_backward(grad, x, h, alpha, beta, a0, b0, spec) -> (grad_x, grad_alpha, grad_beta, grad_a, grad_b)

Every backend runs the NOLA-Philox distributions; the official CUDA layout families
(nola_kernels/official_rng.py) only in the ops its OFFICIAL_OPS names (none where absent). A
backend with fused kernels runs an official family's lowrank ops composed of its own mix and
project and torch's matmul (nola_kernels.lowrank.composed_for_official).
"""

import importlib

import torch

from ..official_rng import parse_official

BACKEND_NAMES = ("torch", "cpu", "triton", "cuda")
AUTO_ORDER = ("cuda", "cpu", "triton", "torch")
_MODULE_NAMES = {name: f"{__name__}.{name}_backend" for name in BACKEND_NAMES}
_modules = {}
_import_errors = {}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here."""


def _load(name):
    """The backend's module, or None when it cannot be imported (the error is kept for messages)."""
    if name not in _modules and name not in _import_errors:
        try:
            _modules[name] = importlib.import_module(_MODULE_NAMES[name])
        except ImportError as error:
            _import_errors[name] = f"{type(error).__name__}: {error}"
    return _modules.get(name)


def unavailable_reason(name, device):
    """Why backend `name` cannot run on `device`, or None when it can."""
    module = _load(name)
    if module is None:
        return f"its module could not be imported ({_import_errors[name]})"
    return module.unavailable_reason(device)


def available_backends(device):
    """Names of the backends that can run on `device`, in the order "auto" prefers them."""
    return [name for name in AUTO_ORDER if unavailable_reason(name, device) is None]


def native_backends(device):
    """available_backends(device) without those that only emulate there (Triton's CPU interpreter)."""
    return [name for name in available_backends(device) if not _emulated(name, device)]


# A compiled forward calls this too: dynamo runs it once while tracing and keeps the name as a
# constant, instead of tracing the backend imports and checks (which break the graph).
@torch.compiler.assume_constant_result
def resolve_backend(name, device):
    """The concrete backend name for `name` ("auto" or one of BACKEND_NAMES) on `device`."""
    if name == "auto":
        return native_backends(device)[0]
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {name!r}")
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run on {device}: {reason}")
    return name


@torch.compiler.assume_constant_result
def resolve_family_backend(name, device, op, distribution):
    """resolve_backend for `op` (an op of nola_kernels/ops.py) on `distribution`: "auto" takes the
    first native backend that implements it; a backend named that does not is a ValueError."""
    resolved = resolve_backend(name, device)
    if name == "auto" and not implements(resolved, op, distribution):
        return next(other for other in native_backends(device) if implements(other, op, distribution))
    check_implemented(resolved, op, distribution)
    return resolved


# nola_matmul needs a backend's mix and project (its composed path; for an official family the
# fused ops are composed of those too, nola_kernels/lowrank.py).
_OPS_NEEDED = {"nola_matmul": ("mix", "project")}


def implements(name, op, distribution):
    """Whether backend `name` (loaded) runs `op` (an op of nola_kernels/ops.py, or nola_matmul)
    for `distribution`."""
    if parse_official(distribution) is None:
        return True
    official_ops = getattr(_load(name), "OFFICIAL_OPS", ())
    return all(needed in official_ops for needed in _OPS_NEEDED.get(op, (op,)))


def check_implemented(name, op, distribution):
    """A ValueError naming `distribution` where backend `name` does not run `op` for it."""
    if implements(name, op, distribution):
        return
    official_ops = getattr(_load(name), "OFFICIAL_OPS", ())
    where = f"in {', '.join(official_ops)} only, not in {op}" if official_ops else "in none of its ops"
    raise ValueError(
        f"the {name} backend implements the official CUDA layout families {where} "
        f"(distribution={distribution!r}); backend='torch' runs every op for them"
    )


def _emulated(name, device):
    emulated = getattr(_modules[name], "emulated", None)
    return emulated is not None and emulated(device)


def get_backend(name):
    """The module implementing backend `name` (already resolved)."""
    return _modules[name]
