"""The NOLA-Philox v1 basis contract (docs/spec.md), generated block by block in PyTorch.

This is the project's one reference generator: every backend must reproduce `basis_block`
bit for bit. A block is the rectangle of basis indices [i_start, i_stop) by flat positions
[n_start, n_stop) of one family (seed, stream); callers walk a matrix in blocks so that the
temporaries stay under a memory budget whatever k is.
"""

import os

import torch

from .philox import MASK32, philox4x32

DISTRIBUTIONS = ("uniform", "rademacher")

# Counter word 0 is n >> COUNTER_SHIFT: one Philox call gives 4 uniform entries (a float per
# word) or 128 rademacher entries (32 signs per word).
COUNTER_SHIFT = {"uniform": 2, "rademacher": 7}
# Peak temporary bytes per generated float32 entry, as measured with nola_kernels.memory: eight
# int64 Philox words per call during a round (uniform), or the bit expansion (rademacher).
# Budgets get a 25% margin; tests/test_memory.py checks that they hold.
_GENERATION_BYTES = {"uniform": 16, "rademacher": 6.4}
_BUDGET_MARGIN = 1.25

DEFAULT_CHUNK_BYTES = 2 << 20  # small enough to stay in L2, which also makes generation fastest
_chunk_bytes = int(os.environ.get("NOLA_CHUNK_BYTES", DEFAULT_CHUNK_BYTES))


def chunk_budget():
    """The memory budget (bytes) for the temporaries of one generated block."""
    return _chunk_bytes


def set_chunk_budget(nbytes):
    """Set the block budget (bytes) used by the PyTorch path; returns the previous one.
    The NOLA_CHUNK_BYTES environment variable sets it at import."""
    global _chunk_bytes
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"chunk budget must be a positive int of bytes, got {nbytes!r}")
    previous, _chunk_bytes = _chunk_bytes, nbytes
    return previous


def _split64(value):
    return value & MASK32, value >> 32


def basis_block(seed, stream, i_start, i_stop, n_start, n_stop, distribution, device=None):
    """Entries (i, n) for i in [i_start, i_stop), n in [n_start, n_stop): float32 of shape
    (i_stop - i_start, n_stop - n_start)."""
    shift = COUNTER_SHIFT[distribution]
    q_start, q_stop = n_start >> shift, ((n_stop - 1) >> shift) + 1
    counter = (
        torch.arange(q_start, q_stop, dtype=torch.int64, device=device),
        torch.arange(i_start, i_stop, dtype=torch.int64, device=device).unsqueeze(1),
        *(torch.tensor(w, dtype=torch.int64, device=device) for w in _split64(stream)),
    )
    words = philox4x32(counter, _split64(seed))
    if distribution == "uniform":
        values = _uniform_from_words(words)
    else:
        values = _rademacher_from_words(words)
    offset = n_start - (q_start << shift)
    return values[:, offset : offset + n_stop - n_start]


def _uniform_from_words(words):
    # value = (m - 2^23) * 2^-23 with m = (x >> 8) | 1: odd m keeps the value off 0 and +-1, and
    # every step is exact in float32, so all backends agree bit for bit.
    rows, calls = words[0].shape
    out = torch.empty(rows, calls, 4, dtype=torch.float32, device=words[0].device)
    for w, x in enumerate(words):
        out[:, :, w] = (x >> 8).bitwise_or_(1).sub_(1 << 23)
    return out.mul_(2.0**-23).view(rows, 4 * calls)


def _rademacher_from_words(words):
    # Entry 32*w + b of a call is bit b of word w: +1 where the bit is 0, -1 where it is 1.
    rows, calls = words[0].shape
    bit_index = torch.arange(32, dtype=torch.int64, device=words[0].device)
    out = torch.empty(rows, calls, 4, 32, dtype=torch.float32, device=words[0].device)
    for w, x in enumerate(words):
        out[:, :, w, :] = (x.unsqueeze(-1) >> bit_index).bitwise_and_(1)
    return out.mul_(-2.0).add_(1.0).view(rows, 128 * calls)


def iter_blocks(k, numel, distribution, dtype=torch.float32, budget=None):
    """Split the k x numel entries of a family into blocks (i_start, i_stop, n_start, n_stop)
    whose generation temporaries, and the block's copy in `dtype`, fit `budget` bytes
    (default: chunk_budget()).
    Whole matrices are grouped when they fit; a matrix larger than the budget is cut along n at
    multiples of one Philox call's entries, so no call is computed twice."""
    budget = chunk_budget() if budget is None else budget
    per_entry = _GENERATION_BYTES[distribution]
    if dtype != torch.float32:  # the float32 block and its copy live together
        per_entry = max(per_entry, 4 + dtype.itemsize)
    entries = max(int(budget / (per_entry * _BUDGET_MARGIN)), 1)
    if numel <= entries:
        rows = entries // numel
        for i in range(0, k, rows):
            yield i, min(i + rows, k), 0, numel
        return
    align = 128  # entries per Philox call: a multiple for every distribution
    width = max(entries // align, 1) * align
    for i in range(k):
        for n in range(0, numel, width):
            yield i, i + 1, n, min(n + width, numel)
