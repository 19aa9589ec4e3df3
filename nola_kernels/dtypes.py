"""The dtype rules: which dtypes each input takes, and the dtype that sums accumulate in."""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COEFF_DTYPES = (torch.float32, torch.float64)


def accumulation_dtype(tensor):
    """Mixing and projection accumulate in float64 for float64 inputs, else in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32
