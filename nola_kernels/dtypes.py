"""The dtype rules: which dtypes each input takes, and the dtype that sums accumulate in.

The float64 rule, stated once: float64 work accumulates in float64, so it runs on the PyTorch
backend's ops and the composed path whatever backend was asked for (the kernels accumulate in
float32; float64 is for checks such as gradcheck). `nola_kernels/ops.py` applies it to mix and
project, and the routing (`nola_kernels/routing.py`) to the low-rank product.
"""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COEFF_DTYPES = (torch.float32, torch.float64)


def accumulation_dtype(tensor):
    """Mixing and projection accumulate in float64 for float64 inputs, else in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def needs_float64(*tensors):
    """Whether any of the tensors (None allowed) puts the work under the float64 rule."""
    return any(t is not None and t.dtype == torch.float64 for t in tensors)
