"""Which path nola_matmul takes: fused (one nola_kernels::lowrank_forward op, on a backend with
fused kernels) or composed (the factors from the mix kernels, then torch's matmul: cuBLAS on a
GPU). The backend's `prefers_fused` decides (it follows the performance model,
nola_kernels/perf_model.py), unless `lowrank_path` forces a path."""

import contextlib
import math

from .dtypes import needs_float64
from .lowrank import LowRankShape
from .official_rng import parse_official

PATHS = ("auto", "fused", "composed")
# Process-wide, not per thread: a plain global is what torch.compile can read (and guard on).
_forced = {"path": "auto"}


@contextlib.contextmanager
def lowrank_path(path):
    """Inside the block, nola_matmul runs `path`: "fused", "composed", or "auto" (the backend's
    choice), so tests and benchmarks reach both paths at any shape. The rules of `runs_fused`
    still hold, and a backend without fused kernels runs composed."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    previous, _forced["path"] = _forced["path"], path
    try:
        yield
    finally:
        _forced["path"] = previous


def runs_fused(module, x, alpha, beta, a0, b0, spec, adds=False):
    """Whether the backend (its module) runs this product fused, `adds` telling whether it adds
    into a layer's output (nola_matmul's add_to); an official CUDA layout family
    takes the composed path under "auto". Composed, whatever was asked:
    float64 work (the dtype rule, nola_kernels/dtypes.py) and a scaling that is not finite, whose
    inf/NaN pattern only the composed order (scaling * B first, as the reference) reproduces."""
    if not hasattr(module, "lowrank_forward") or needs_float64(x, alpha, beta, a0, b0):
        return False
    if not math.isfinite(spec.scaling):
        return False
    path = _forced["path"]
    if path != "auto":
        return path == "fused"
    if parse_official(spec.distribution) is not None:
        return False  # the fused ops would compose it too (lowrank.ComposedProducts), as one op
    in_features = x.shape[-1]
    shape = LowRankShape(
        x.numel() // in_features, in_features, spec.out_features, spec.rank, alpha.numel(), beta.numel(),
        x.dtype, spec.distribution, adds,
    )  # fmt: skip
    return module.prefers_fused(shape)
