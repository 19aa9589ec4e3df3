"""The hand-written CUDA backend: the compiled extension nola_kernels._cuda (csrc/), whose ops live
under torch.ops.nola_kernels_cuda, on CUDA tensors.

The kernels accumulate in float32; float64 inputs take the PyTorch path instead, which
accumulates in float64 as the contract asks.
"""

import importlib
import importlib.util
import warnings

import torch

from . import torch_backend

EXTENSION = "nola_kernels._cuda"
# The oldest GPU the extension is built for (sm_80; PTX covers the later ones, setup.py).
MIN_CAPABILITY = (8, 0)

# Work per basis entry of the kernels, in 32-bit operations: a uniform Philox call (10 rounds of
# about 6 integer ops) serves 4 entries, plus the multiply-add of the mix.
_GENERATION_OPS_PER_ENTRY = 16
# The fused products run on float32 FMA units (2 operations per multiply-add), not tensor cores.
_PRODUCT_OPS_PER_ENTRY = 2


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
    """scale * sum_i coeffs[i] * U_i as a (rows, cols) float32 tensor (float64 coeffs: the torch path)."""
    if coeffs.dtype == torch.float64:
        return torch_backend.mix(coeffs, seed, stream, rows, cols, scale, distribution)
    return _ops.mix(coeffs, seed, stream, rows, cols, scale, distribution)


def project(grad, seed, stream, k, scale, distribution):
    """scale * <grad, U_i> for i < k as a (k,) float32 tensor (float64 grad: the torch path)."""
    if grad.dtype == torch.float64:
        return torch_backend.project(grad, seed, stream, k, scale, distribution)
    return _ops.project(grad, seed, stream, k, scale, distribution)


def prefers_fused(tokens, in_features, out_features, rank, k, l, dtype):  # noqa: E741 (NOLA's name)
    """Whether lowrank_forward/backward beat mix + cuBLAS products for this shape.

    Not measured yet (no GPU was available when this was written): an estimate. Both ways generate
    each factor once with the same kernel; they differ in the products, which the fused path runs
    on float32 FMA units and the other on cuBLAS (tensor cores in half precision). So the fused
    path is chosen while its products cost no more than the generation, where the launches and
    temporaries it saves matter most."""
    if dtype == torch.float64:
        return False
    generation = _GENERATION_OPS_PER_ENTRY * rank * (k * in_features + l * out_features)
    products = _PRODUCT_OPS_PER_ENTRY * tokens * rank * (in_features + out_features)
    return products <= generation


def lowrank_forward(x, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution):
    """(delta, h): h = x A^T in float32 (tokens, rank), delta = scaling * h B^T in x.dtype."""
    return _ops.lowrank_forward(
        x, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution
    )


def lowrank_backward(
    grad, x, h, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution
):
    """(grad_x, grad_alpha, grad_beta, grad_a, grad_b) of the forward above; see nola_kernels/ops.py."""
    return _ops.lowrank_backward(
        grad, x, h, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution
    )


def philox_rate(like, calls, seed):
    """The Philox-only kernel (the generation rate bound): `calls` calls on like's device; returns
    one float per block so the work cannot be optimized away."""
    return _ops.philox_rate(like, calls, seed)
