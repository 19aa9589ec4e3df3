"""Blocks of every basis family a `distribution` name can name, for the PyTorch path: the
NOLA-Philox distributions (nola_kernels/basis.py) and the official CUDA layout families
(nola_kernels/official_rng.py), whose entries depend on the basis's size k * numel too."""

import torch

from .basis import basis_block, iter_blocks
from .official_rng import official_block, parse_official

# Peak temporary bytes per generated entry of an official family, as measured with
# nola_kernels.memory (tests/test_official_family.py checks that the budget holds): each entry
# is its own Philox call on int64 words, about 13 int64 tensors at once.
OFFICIAL_GENERATION_BYTES = 104
# The official families' blocks are cut as uniform's (basis.iter_blocks), whose budget counts
# this many bytes per entry: the budget handed over is scaled by the ratio.
_UNIFORM_GENERATION_BYTES = 16


def family_block(seed, stream, k, numel, i_start, i_stop, n_start, n_stop, distribution, device=None):
    """Entries (i, n) for i in [i_start, i_stop), n in [n_start, n_stop) of the family's (k, numel)
    basis: float32 of shape (i_stop - i_start, n_stop - n_start)."""
    family = parse_official(distribution)
    if family is None:
        return basis_block(seed, stream, i_start, i_stop, n_start, n_stop, distribution, device)
    return official_block(family, seed, k, numel, i_start, i_stop, n_start, n_stop, device)


def family_blocks(k, numel, distribution, budget, dtype=torch.float32, **steps):
    """basis.iter_blocks for every family (`steps`: its row_step and col_step)."""
    if parse_official(distribution) is None:
        return iter_blocks(k, numel, distribution, budget, dtype, **steps)
    scaled = max(budget * _UNIFORM_GENERATION_BYTES // OFFICIAL_GENERATION_BYTES, 1)
    return iter_blocks(k, numel, "uniform", scaled, dtype, **steps)
