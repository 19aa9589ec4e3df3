"""The Triton backend: the kernels of triton/ (installed as nola_kernels.triton_kernels) on CUDA
tensors, or on CPU tensors in Triton's interpreter when TRITON_INTERPRET=1 was set before they
were imported. float64 work goes to the PyTorch backend: the kernels accumulate in float32, and
float64 is only for checks such as gradcheck."""

import torch
import triton

from ..dtypes import accumulation_dtype

# Without Triton this raises ImportError, which the backend registry reports as the reason.
from ..triton_kernels import lowrank as _lowrank
from ..triton_kernels import mix_project as _mix_project
from ..triton_kernels.launch import INTERPRETED
from . import torch_backend

ROUNDS = 10  # Philox4x32-10, the contract's generator


def unavailable_reason(device):
    device = torch.device(device)
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if INTERPRETED:
            return None
        return (
            "the Triton kernels run on CUDA tensors; set TRITON_INTERPRET=1 before importing "
            "nola_kernels to run them on the CPU in Triton's interpreter (slow)"
        )
    return f"the Triton kernels run on CUDA tensors, not on {device.type}"


def emulated(device):
    """With TRITON_INTERPRET=1 the kernels run in Triton's interpreter, on any device's tensors:
    usable by name, never chosen by auto."""
    return INTERPRETED


def mix(coeffs, seed, stream, rows, cols, scale, distribution):
    if accumulation_dtype(coeffs) == torch.float64:
        return torch_backend.mix(coeffs, seed, stream, rows, cols, scale, distribution)
    return _mix_project.mix(coeffs, seed, stream, rows, cols, scale, distribution, ROUNDS)


def project(grad, seed, stream, k, scale, distribution):
    if accumulation_dtype(grad) == torch.float64:
        return torch_backend.project(grad, seed, stream, k, scale, distribution)
    return _mix_project.project(grad, seed, stream, k, scale, distribution, ROUNDS)


# Largest basis (entries of both factors) that nola_matmul runs fused; larger ones run composed.
# Not measured yet (no GPU when this was written); the reasoning: both paths generate every
# entry twice per training step (the fused backward regenerates A and B while projecting, the
# composed one projects the gradients), so they differ in how the generation spreads over the
# GPU. The fused grid has in/128 + out/64 programs, each walking all k (or l) basis matrices of
# its slice, while the composed mix and project kernels spread the same work over ~500 programs;
# the fused path saves launches and the factors' round trip through memory, which matters only
# while the generation is small. bench/ times both (nola-triton-fused, nola-triton-composed) at
# GPT-2 M and LLaMA-2-7B shapes; set this from those numbers.
FUSED_MAX_ENTRIES = 1 << 22


# Largest padded rank (next power of 2) of the fused kernels: their backward tiles outgrow Hopper's
# shared memory past it (tests/compile_for_hopper.py checks every tuned setting up to it).
FUSED_MAX_RANK = 128


def prefers_fused(tokens, in_features, out_features, rank, k, l, dtype):  # noqa: E741 (NOLA's name)
    """Whether nola_matmul should run the fused kernels rather than mix + two matmuls."""
    return (
        tokens > 0
        and triton.next_power_of_2(rank) <= FUSED_MAX_RANK
        and k * rank * in_features + l * out_features * rank <= FUSED_MAX_ENTRIES
    )


def lowrank_forward(x, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution):
    return _lowrank.forward(
        x, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution, ROUNDS
    )


def lowrank_backward(grad, x, h, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution):
    return _lowrank.backward(
        grad, x, h, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution, ROUNDS
    )
