"""The low-rank product shared by nola_matmul and the naive baselines, so all compute alike, and
the named objects that describe one product below the op schema."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LowRankSpec:
    """The constants of one NOLA delta: A = a0 + mix(alpha, seed_a) (rank x in) and
    B = b0 + mix(beta, seed_b) (out_features x rank), both basis stream 0 with scales 1/sqrt(k)
    and 1/sqrt(l); delta = scaling * (x A^T) B^T. The torch.library schemas take these as flat
    scalars (`schema_args`, in field order); everything below the ops takes the object."""

    seed_a: int
    seed_b: int
    rank: int
    out_features: int
    scaling: float
    distribution: str

    def schema_args(self):
        return (self.seed_a, self.seed_b, self.rank, self.out_features, self.scaling, self.distribution)


@dataclass(frozen=True)
class LowRankShape:
    """The sizes of one product, as the routing (`prefers_fused`) and the performance model see it."""

    tokens: int
    in_features: int
    out_features: int
    rank: int
    k: int
    l: int  # noqa: E741 (NOLA's name for B's basis size)
    dtype: torch.dtype
    distribution: str = "uniform"


def with_offset(mixed, offset):
    """A factor: the mixed basis plus its optional fixed offset (a0 or b0)."""
    return mixed if offset is None else mixed + offset


def lowrank_delta(x, a, b, add_to=None):
    """(x a^T) b^T with both factors cast to x's dtype: two skinny products, so autograd saves
    only x, the small factors and x a^T. With `add_to` (..., out) in the product's dtype, returns
    add_to + delta with the add done by the second GEMM (addmm's beta = 1), which saves a pass over
    the output; any other add_to is added after."""
    h = x @ a.to(x.dtype).T
    b = b.to(h.dtype)
    if add_to is None:
        return h @ b.T
    if add_to.shape != (*h.shape[:-1], b.shape[0]) or add_to.dtype != _product_dtype(h):
        return add_to + h @ b.T
    flat = torch.addmm(add_to.reshape(-1, b.shape[0]), h.reshape(-1, h.shape[-1]), b.T)
    return flat.view(add_to.shape)


def _product_dtype(h):
    """The dtype torch's matmul returns for h: autocast's where it is on."""
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return h.dtype
