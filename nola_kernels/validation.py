"""Argument checks shared by the public API: every bad input raises a TypeError or ValueError
that names the argument and what was expected, before any work is done."""

import math
import numbers
import operator
import re
import sys

import torch

from .backends import BACKEND_NAMES
from .basis import DISTRIBUTIONS
from .dtypes import COEFF_DTYPES, FLOAT_DTYPES
from .official_rng import MAX_OFFICIAL_ENTRIES, parse_official

SEED_LIMIT = 2**63  # seeds and streams are 64-bit counter/key words kept below int64's limit
MAX_BASIS_INDEX = 2**32  # the basis index is one 32-bit counter word
MAX_NUMEL = 2**34  # flat positions n fit counter word 0 after the shift by 2


def check_int(name, value, low, high=None):
    """`value` as an int in [low, high); bools and non-integers are a TypeError."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        shown = value if value.bit_length() <= 128 else f"an int of {value.bit_length()} bits"
        raise ValueError(f"{name} must be an int {bound}, got {shown}")
    return value


def check_seed(name, value):
    return check_int(name, value, 0, SEED_LIMIT)


def check_basis_count(k, name="k"):
    """k, the number of basis matrices: 1 <= k <= 2^32 (the basis index is one counter word)."""
    return check_int(name, k, 1, MAX_BASIS_INDEX + 1)


def check_bool(name, value):
    """A real bool: strings such as 'no' and ints are refused, not read as truth values."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_module(name, value):
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def check_name(name, value):
    """An adapter name: a non-empty str without '.', which torch's module paths reserve."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r}")
    if not value or "." in value:
        raise ValueError(f"{name} must be a non-empty name without '.', got {value!r}")
    return value


def check_target_modules(value, name="target_modules"):
    """PEFT's target_modules (or exclude_modules): a regex (str) or a non-empty list or tuple of
    non-empty names."""
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"{name} is not a valid regular expression: {error}") from error
        if not value:
            raise ValueError(f"{name} must not be empty")
        return value
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{name} must be a regex or a non-empty list of names, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{name} must hold non-empty names (str), got {item!r} in {value!r}")
    return value


def check_backend_name(value):
    """'auto' or one of BACKEND_NAMES; whether it runs on a device is decided at the first call."""
    if not isinstance(value, str) or (value != "auto" and value not in BACKEND_NAMES):
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {value!r}")
    return value


def check_distribution(value, official=False):
    """A NOLA-Philox distribution's name; with `official`, the message says that an official
    family's name (checked by check_family) would do too."""
    if not isinstance(value, str) or value not in DISTRIBUTIONS:
        also = " or an official family's name (official_rng.official_distribution)" if official else ""
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}{also}, got {value!r}")
    return value


def check_shape(name, shape):
    """A basis matrix shape (R, C) of positive ints with R*C <= 2^34."""
    try:
        rows, cols = shape
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (rows, cols), got {shape!r}") from None
    rows = check_int(f"{name}[0]", rows, 1)
    cols = check_int(f"{name}[1]", cols, 1)
    if rows * cols > MAX_NUMEL:
        raise ValueError(f"{name} must have at most 2**34 entries, got {rows} x {cols}")
    return rows, cols


def check_real(name, value, finite=False):
    """`value` as a float. inf and NaN pass (they propagate) unless `finite`; a number beyond
    float's range (an int such as 10**400) is a ValueError, not Python's OverflowError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} is out of float range (magnitude above {sys.float_info.max:.4g})") from None
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_float_tensor(name, tensor, dtypes=FLOAT_DTYPES):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}; got {str(tensor.dtype).replace('torch.', '')}")
    return tensor


def check_coeffs(name, coeffs):
    """Coefficients: a non-empty 1-D float32 or float64 tensor of at most 2^32 values."""
    check_float_tensor(name, coeffs, COEFF_DTYPES)
    if coeffs.dim() != 1:
        raise ValueError(
            f"{name} must be 1-D (one coefficient per basis matrix), got shape {tuple(coeffs.shape)}"
        )
    if coeffs.numel() == 0:
        raise ValueError(f"{name} must not be empty: NOLA needs at least one basis matrix")
    if coeffs.numel() > MAX_BASIS_INDEX:
        raise ValueError(f"{name} may hold at most 2**32 coefficients, got {coeffs.numel()}")
    return coeffs


def check_offset(name, offset, shape):
    """An optional fixed offset (a0 or b0) of exactly `shape`."""
    if offset is None:
        return None
    check_float_tensor(name, offset)
    if tuple(offset.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(offset.shape)}")
    return offset


def check_same_device(**tensors):
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")


def check_family(seed, stream, distribution, k, numel, basis="the basis"):
    """A basis family and its distribution, (seed, stream, distribution), for a basis of k
    matrices of numel entries (`basis` names it in messages): a NOLA-Philox distribution, or an
    official CUDA layout family (nola_kernels.official_rng.official_distribution), whose stream is
    0 and whose basis holds at most 2^40 entries."""
    seed, stream = check_seed("seed", seed), check_seed("stream", stream)
    if parse_official(distribution) is None:
        return seed, stream, check_distribution(distribution, official=True)
    if stream != 0:
        raise ValueError(f"stream must be 0 for an official family (distribution={distribution!r}), got {stream}")
    if k * numel > MAX_OFFICIAL_ENTRIES:
        raise ValueError(
            f"an official family's basis holds at most 2**40 entries (distribution={distribution!r}): {basis} has "
            f"k * rows * cols = {k} * {numel}"
        )
    return seed, stream, distribution


def check_device(device):
    """`device` as a torch.device (None: the default device) that exists on this machine: an
    empty tensor is made there, so 'cuda' without a GPU is refused here, by name."""
    if device is None:
        return torch.empty(0).device
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be a torch.device or a device string such as 'cuda:0', got {device!r}"
        ) from None
    try:
        torch.empty(0, device=device)
    except (AssertionError, RuntimeError, ImportError) as error:  # what torch raises varies by device type
        raise ValueError(f"device {str(device)!r} is not available here: {error}") from error
    return device
