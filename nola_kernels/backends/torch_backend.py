"""The pure-PyTorch backend: runs on any device PyTorch supports and never holds more of the basis
than one block (nola_kernels.chunk_budget(device) bytes of temporaries), whatever k is."""

import torch

from ..basis import basis_block, chunk_budget, iter_blocks
from ..dtypes import accumulation_dtype


def unavailable_reason(device):
    """The PyTorch path runs wherever PyTorch does."""
    return None


def _block(seed, stream, i0, i1, n0, n1, distribution, device, dtype):
    # Passed straight to addmv_, so no block outlives its use while the next one is generated.
    return basis_block(seed, stream, i0, i1, n0, n1, distribution, device).to(dtype)


def mix(coeffs, seed, stream, rows, cols, scale, distribution):
    """scale * sum_i coeffs[i] * U_i as a (rows, cols) tensor in float32 (float64 for float64 coeffs)."""
    dtype = accumulation_dtype(coeffs)
    numel = rows * cols
    weights = coeffs.to(dtype) * scale
    out = torch.zeros(numel, dtype=dtype, device=coeffs.device)
    for i0, i1, n0, n1 in iter_blocks(
        coeffs.numel(), numel, distribution, chunk_budget(coeffs.device), dtype
    ):
        out[n0:n1].addmv_(
            _block(seed, stream, i0, i1, n0, n1, distribution, coeffs.device, dtype).T, weights[i0:i1]
        )
    return out.view(rows, cols)


def project(grad, seed, stream, k, scale, distribution):
    """scale * <grad, U_i> for i < k: a (k,) tensor in float32 (float64 for float64 grad)."""
    dtype = accumulation_dtype(grad)
    flat = grad.reshape(-1).to(dtype)
    out = torch.zeros(k, dtype=dtype, device=grad.device)
    for i0, i1, n0, n1 in iter_blocks(k, flat.numel(), distribution, chunk_budget(grad.device), dtype):
        out[i0:i1].addmv_(_block(seed, stream, i0, i1, n0, n1, distribution, grad.device, dtype), flat[n0:n1])
    return out.mul_(scale)
