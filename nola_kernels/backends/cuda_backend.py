"""The hand-written CUDA backend: the compiled extension nola_kernels._cuda (csrc/), whose ops live
under torch.ops.nola_kernels_cuda, on CUDA tensors.

The kernels accumulate in float32; float64 work takes the PyTorch path (nola_kernels/dtypes.py).
"""

import importlib
import importlib.util
import warnings

import torch

from .. import perf_model
from ..lowrank import composed_for_official
from . import check_implemented

EXTENSION = "nola_kernels._cuda"
# The oldest GPU the extension is built for (sm_80; PTX covers the later ones, setup.py).
MIN_CAPABILITY = (8, 0)
# The official CUDA layout families run in the mix and project kernels (csrc/official.cu) and the
# grouped ones (csrc/grouped.cu), and the low-rank products compose them.
OFFICIAL_OPS = ("mix", "project", "mix_grouped", "project_grouped", "lowrank_forward", "lowrank_backward")

def _load(module_name=EXTENSION):
    """(the ops namespace, None), or (None, why not). An extension that was built but fails to load
    warns once; one that was never built is the normal case on CPU-only installs and does not."""
    if importlib.util.find_spec(module_name) is None:
        return None, (
            "the CUDA extension is not built (install with a CUDA build of torch and a CUDA toolkit; "
            "NOLA_BUILD_CUDA=1 forces the build, see README)"
        )
    try:
        importlib.import_module(module_name)
    except (ImportError, OSError) as error:
        reason = f"the CUDA extension failed to load ({type(error).__name__}: {error})"
        warnings.warn(f"nola_kernels: {reason}; using the other backends", RuntimeWarning, stacklevel=2)
        return None, reason
    return torch.ops.nola_kernels_cuda, None


_ops, _load_error = _load()


def unavailable_reason(device):
    """None on CUDA devices of compute capability 8.0 and up once the extension is loaded;
    otherwise why not."""
    if _ops is None:
        return _load_error
    device = torch.device(device)
    if device.type != "cuda":
        return "the CUDA kernels run on CUDA tensors only"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"the CUDA kernels need compute capability 8.0 or later, this GPU has {capability[0]}.{capability[1]}"
    return None


def mix(coeffs, seed, stream, rows, cols, scale, distribution):
    """scale * sum_i coeffs[i] * U_i as a (rows, cols) float32 tensor."""
    check_implemented("cuda", "mix", distribution)
    return _ops.mix(coeffs, seed, stream, rows, cols, scale, distribution)


def project(grad, seed, stream, k, scale, distribution):
    """scale * <grad, U_i> for i < k as a (k,) float32 tensor."""
    check_implemented("cuda", "project", distribution)
    return _ops.project(grad, seed, stream, k, scale, distribution)


def mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution):
    """scale * sum_i coeffs[g, i] * U_i for every row g of coeffs (G, k), as a (G, rows, cols)
    float32 tensor; each basis entry is generated once for a chunk of rows (csrc/grouped.cu)."""
    check_implemented("cuda", "mix_grouped", distribution)
    return _ops.mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution)


def project_grouped(grads, seed, stream, k, scale, distribution):
    """scale * <grads[g], U_i> for i < k and every row g of grads (G, rows, cols), as a (G, k)
    float32 tensor."""
    check_implemented("cuda", "project_grouped", distribution)
    return _ops.project_grouped(grads, seed, stream, k, scale, distribution)


def prefers_fused(shape):
    """Whether lowrank_forward/backward beat mix + cuBLAS products at this LowRankShape, by the
    performance model (nola_kernels/perf_model.py). Both paths generate each factor with the same
    kernels; the fused one runs its products on csrc/gemm.cu's float32 FMA GEMM and queues fewer
    ops, so it wins only where the products are too small for cuBLAS's tensor cores to matter."""
    return perf_model.fused_wins("cuda", shape)


def _fused_forward(x, alpha, beta, a0, b0, spec):
    """(delta, h): h = x A^T in float32 (tokens, rank), delta = scaling * h B^T in x.dtype."""
    return _ops.lowrank_forward(x, alpha, beta, a0, b0, *spec.schema_args())


def _fused_backward(grad, x, h, alpha, beta, a0, b0, spec):
    """(grad_x, grad_alpha, grad_beta, grad_a, grad_b) of the forward above; see nola_kernels/ops.py."""
    return _ops.lowrank_backward(grad, x, h, alpha, beta, a0, b0, *spec.schema_args())


# The fused kernels generate NOLA-Philox tiles only: an official family's products are composed.
lowrank_forward, lowrank_backward = composed_for_official(_fused_forward, _fused_backward, mix, project)


def philox_rate(like, calls, seed):
    """The Philox-only kernel (the generation rate bound): `calls` calls on like's device; returns
    one float per block so the work cannot be optimized away."""
    return _ops.philox_rate(like, calls, seed)
