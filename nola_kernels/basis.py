"""The NOLA-Philox basis contract (docs/spec.md), generated block by block in PyTorch.

This is the project's one reference generator: every backend must reproduce `basis_block`
bit for bit. A block is the rectangle of basis indices [i_start, i_stop) by flat positions
[n_start, n_stop) of one family (seed, stream); callers walk a matrix in blocks so that the
temporaries stay under a memory budget whatever k is.
"""

import os

import torch

from .philox import MASK32, philox4x32

# v1's distributions, then those v1.1 adds (Philox4x32-7; docs/spec.md, "Distributions").
V1_DISTRIBUTIONS = ("uniform", "rademacher")
DISTRIBUTIONS = (*V1_DISTRIBUTIONS, "uniform16_philox7", "rademacher_philox7")

# Counter word 0 is n >> COUNTER_SHIFT: one Philox call gives 4 uniform entries (a float per
# word), 8 uniform16 entries (a float per 16-bit half word) or 128 rademacher entries (32 signs
# per word).
COUNTER_SHIFT = {"uniform": 2, "rademacher": 7, "uniform16_philox7": 3, "rademacher_philox7": 7}
PHILOX_ROUNDS = {"uniform": 10, "rademacher": 10, "uniform16_philox7": 7, "rademacher_philox7": 7}
# Peak temporary bytes per generated float32 entry, as measured with nola_kernels.memory: eight
# int64 Philox words per call during a round (uniform: 4 entries a call; uniform16: 8, so about
# 9-10 bytes an entry), or the bit expansion (rademacher). Budgets get a 25% margin;
# tests/test_memory.py checks that they hold.
_GENERATION_BYTES = {"uniform": 16, "rademacher": 6.4, "uniform16_philox7": 10, "rademacher_philox7": 6.4}
_BUDGET_MARGIN = 1.25

# Default block budgets. CPU: 2 MiB keeps the peak near a tenth of the naive path's at GPT-2
# medium shapes (blocks of 4-8 MiB generate up to 2x faster). Accelerators: a block costs about
# 150 kernel launches, so it must hold enough entries to hide them.
DEFAULT_CHUNK_BYTES = {"cpu": 2 << 20, "accelerator": 64 << 20}


def chunk_budget(device="cpu"):
    """The memory budget (bytes) for the temporaries of one generated block on `device`."""
    if _chunk_bytes is not None:
        return _chunk_bytes
    return DEFAULT_CHUNK_BYTES["cpu" if torch.device(device).type == "cpu" else "accelerator"]


def set_chunk_budget(nbytes):
    """Set the block budget (bytes) of the PyTorch path on every device, or None for the
    per-device defaults; returns the previous setting. NOLA_CHUNK_BYTES sets it at import."""
    global _chunk_bytes
    previous, _chunk_bytes = _chunk_bytes, None if nbytes is None else _checked_budget(nbytes)
    return previous


def _checked_budget(nbytes, name="chunk budget"):
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"{name} must be a positive int of bytes, got {nbytes!r}")
    return nbytes


def _budget_from_environment():
    value = os.environ.get("NOLA_CHUNK_BYTES")
    if value is None:
        return None
    try:
        return _checked_budget(int(value), "NOLA_CHUNK_BYTES")
    except ValueError:
        raise ValueError(f"NOLA_CHUNK_BYTES must be a positive int of bytes, got {value!r}") from None


_chunk_bytes = _budget_from_environment()


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
    words = philox4x32(counter, _split64(seed), PHILOX_ROUNDS[distribution])
    values = _VALUES_FROM_WORDS[distribution](words)
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


def _uniform16_from_words(words):
    # Entry 2*w + h of a call is half h of word w (h = 0: the low 16 bits): value =
    # (m - 2^15) * 2^-15 with m = half | 1, the 16-bit form of the uniform rule above.
    rows, calls = words[0].shape
    out = torch.empty(rows, calls, 4, 2, dtype=torch.float32, device=words[0].device)
    for w, x in enumerate(words):
        out[:, :, w, 0] = (x & 0xFFFF).bitwise_or_(1).sub_(1 << 15)
        out[:, :, w, 1] = (x >> 16).bitwise_or_(1).sub_(1 << 15)
    return out.mul_(2.0**-15).view(rows, 8 * calls)


def _rademacher_from_words(words):
    # Entry 32*w + b of a call is bit b of word w: +1 where the bit is 0, -1 where it is 1.
    rows, calls = words[0].shape
    bit_index = torch.arange(32, dtype=torch.int64, device=words[0].device)
    out = torch.empty(rows, calls, 4, 32, dtype=torch.float32, device=words[0].device)
    for w, x in enumerate(words):
        out[:, :, w, :] = (x.unsqueeze(-1) >> bit_index).bitwise_and_(1)
    return out.mul_(-2.0).add_(1.0).view(rows, 128 * calls)


_VALUES_FROM_WORDS = {
    "uniform": _uniform_from_words,
    "rademacher": _rademacher_from_words,
    "uniform16_philox7": _uniform16_from_words,
    "rademacher_philox7": _rademacher_from_words,
}


def iter_blocks(k, numel, distribution, budget, dtype=torch.float32, *, row_step=1, col_step=128):
    """Split the k x numel entries of a family into blocks (i_start, i_stop, n_start, n_stop)
    whose generation temporaries, and the block's copy in `dtype`, fit `budget` bytes: every
    block but the last of a row or column is rows x width, rows a multiple of `row_step` and
    width either a whole matrix or an even cut of it at multiples of `col_step`, a multiple of
    one Philox call's entries (128 for every distribution) so that no call is computed twice.
    A budget below row_step x col_step entries gets blocks of that size: callers that sum over
    fixed groups of indices or positions need them whole. Blocks of the same rows come in order
    of n. No work (k or numel 0) gives no blocks."""
    if k == 0 or numel == 0:
        return
    per_entry = _GENERATION_BYTES[distribution]
    if dtype != torch.float32:  # the float32 block and its copy live together
        per_entry = max(per_entry, 4 + dtype.itemsize)
    entries = max(int(budget / (per_entry * _BUDGET_MARGIN)), 1)
    rows, width = _block_shape(k, numel, entries, 1 << COUNTER_SHIFT[distribution], min(row_step, k), col_step)
    for i in range(0, k, rows):
        for n in range(0, numel, width):
            yield i, min(i + rows, k), n, min(n + width, numel)


def _block_shape(k, numel, entries, call, row_step, col_step):
    """(rows, width) of the blocks that generate the most entries within `entries`; fewer cuts of
    a matrix win ties. A few cut counts from the fewest that fit row_step rows are tried: more
    cuts give narrower blocks, where whole multiples of row_step rows fill the budget better."""
    row_limit = -(-k // row_step) * row_step
    most_cuts = -(-numel // col_step)
    fewest = min(max(-(-numel * row_step // entries), 1), most_cuts)
    best = (0, row_step, col_step if most_cuts > 1 else numel)
    for cuts in range(fewest, min(fewest + 4, most_cuts) + 1):
        width = numel if cuts == 1 else -(-numel // (cuts * col_step)) * col_step
        generated = -(-width // call) * call  # a row generates whole Philox calls, used or not
        rows = min(entries // generated // row_step * row_step, row_limit)
        if rows * generated > best[0]:
            best = (rows * generated, rows, width)
    return best[1:]
