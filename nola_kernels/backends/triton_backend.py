"""The Triton backend: the kernels of triton/ (installed as nola_kernels.triton_kernels) on CUDA
tensors, or on CPU tensors in Triton's interpreter when TRITON_INTERPRET=1 was set before they
were imported. float64 work goes to the PyTorch backend (nola_kernels/dtypes.py)."""

import torch
import triton

from .. import perf_model
from ..lowrank import composed_for_official

# Without Triton this raises ImportError, which the backend registry reports as the reason.
from ..triton_kernels import grouped as _grouped
from ..triton_kernels import lowrank as _lowrank
from ..triton_kernels import mix_project as _mix_project
from ..triton_kernels.launch import INTERPRETED


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


# The official CUDA layout families run in every op: mix, project and their grouped forms in
# kernels of their own, the low-rank products composed of those and torch's matmul.
OFFICIAL_OPS = ("mix", "project", "mix_grouped", "project_grouped", "lowrank_forward", "lowrank_backward")


def mix(coeffs, seed, stream, rows, cols, scale, distribution):
    return _mix_project.mix(coeffs, seed, stream, rows, cols, scale, distribution)


def project(grad, seed, stream, k, scale, distribution):
    return _mix_project.project(grad, seed, stream, k, scale, distribution)


def mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution):
    return _grouped.mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution)


def project_grouped(grads, seed, stream, k, scale, distribution):
    return _grouped.project_grouped(grads, seed, stream, k, scale, distribution)


# Largest padded rank (next power of 2) of the fused kernels: their backward tiles outgrow Hopper's
# shared memory past it (tests/compile_for_hopper.py checks every tuned setting up to it).
FUSED_MAX_RANK = 128


def prefers_fused(shape):
    """Whether nola_matmul should run the fused kernels rather than mix + cuBLAS products at this
    LowRankShape: by the performance model (nola_kernels/perf_model.py), within FUSED_MAX_RANK,
    and only where both factors' tiles are whole Philox calls: the model prices those loops, and
    the entry-wise path of other tiles makes a call per entry or few. The fused grid has in/128 +
    out/64 programs, which leaves most of the SMs idle at GPT-2 and LLaMA widths, while the
    composed mix and project kernels fill the GPU."""
    if triton.next_power_of_2(shape.rank) > FUSED_MAX_RANK:
        return False
    tiles = _lowrank.FactorTiles.of(shape.in_features, shape.out_features, shape.rank, shape.distribution)
    return tiles.a_aligned and tiles.b_aligned and perf_model.fused_wins("triton", shape)


def _fused_forward(x, alpha, beta, a0, b0, spec):
    return _lowrank.forward(x, alpha, beta, a0, b0, *spec.schema_args())


def _fused_backward(grad, x, h, alpha, beta, a0, b0, spec):
    return _lowrank.backward(grad, x, h, alpha, beta, a0, b0, *spec.schema_args())


# The fused kernels generate NOLA-Philox tiles only: an official family's products are composed.
lowrank_forward, lowrank_backward = composed_for_official(_fused_forward, _fused_backward, mix, project)
