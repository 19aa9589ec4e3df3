"""The Triton backend: the kernels of triton/ (installed as nola_kernels.triton_kernels) on CUDA
tensors, or on CPU tensors in Triton's interpreter when TRITON_INTERPRET=1 was set before they
were imported. float64 work goes to the PyTorch backend: the kernels accumulate in float32, and
float64 is only for checks such as gradcheck."""

import torch

from ..dtypes import accumulation_dtype
from . import torch_backend

# Without Triton this raises ImportError, which the backend registry reports as the reason.
from ..triton_kernels import mix_project as _mix_project
from ..triton_kernels.launch import INTERPRETED

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
    """On the CPU the kernels run in Triton's interpreter: usable by name, never chosen by auto."""
    return torch.device(device).type == "cpu"


def mix(coeffs, seed, stream, rows, cols, scale, distribution):
    if accumulation_dtype(coeffs) == torch.float64:
        return torch_backend.mix(coeffs, seed, stream, rows, cols, scale, distribution)
    return _mix_project.mix(coeffs, seed, stream, rows, cols, scale, distribution, ROUNDS)


def project(grad, seed, stream, k, scale, distribution):
    if accumulation_dtype(grad) == torch.float64:
        return torch_backend.project(grad, seed, stream, k, scale, distribution)
    return _mix_project.project(grad, seed, stream, k, scale, distribution, ROUNDS)
