"""Launch settings shared by the Triton kernels: whether they run in Triton's CPU interpreter,
block sizes, warps and grid targets, the Philox key and counter words of a basis family, output
buffers, and the device a launch runs on."""

import contextlib
import os

import torch
import triton

from nola_kernels.basis import COUNTER_SHIFT
from nola_kernels.philox import MASK32

# The kernels are compiled or interpreted as their @triton.jit decorators run (at import). The
# interpreter runs each program one after another in NumPy, at a cost per operation more than
# per entry, so it gets few programs and wide tiles.
INTERPRETED = bool(triton.knobs.runtime.interpret)

# Warps per program of the flat kernels. A projection sums over its program once per basis
# index: within one warp that is five shuffles, with no shared memory and no barrier.
MIX_WARPS = 4
PROJECT_WARPS = 1
# Philox calls per thread per basis index in the flat kernels: four independent uniform chains
# hide the multiply latency; one rademacher call already feeds 128 entries.
_CALLS_PER_THREAD = {"uniform": 4, "uniform16_philox7": 4, "rademacher": 1, "rademacher_philox7": 1}
# Enough warps to fill a Hopper GPU (132 SMs) to about half of its resident capacity; a few
# programs in the interpreter, so that the split code paths still run in CPU tests.
GRID_TARGET_WARPS = 4 * MIX_WARPS if INTERPRETED else 132 * 32
# Fewer basis indices than this per split spend more on adding partials than they save.
MIN_SPLIT_INDICES = 1 if INTERPRETED else 16
# Basis matrices generated together per loop step, many in the interpreter. On a GPU: one in the
# flat kernels (each thread already makes several calls), four in the factor tiles of the fused
# kernels (more in rademacher tiles of whole calls: one call per thread, lowrank._factor_kwargs).
BLOCK_I = 32 if INTERPRETED else 1
FACTOR_BLOCK_I = 32 if INTERPRETED else 4
# Interpreted flat blocks: whole rademacher Philox calls (128 entries), so every call is made once.
_INTERPRETED_BLOCK_MIN, _INTERPRETED_BLOCK_MAX = 128, 1024

# Output and partial buffers are left uninitialized: every element is written by exactly one
# program. NOLA_DEBUG_POISON=1 (read at import; the tests set it) fills them with NaN first, so
# an element that no program wrote shows.
_poison = os.environ.get("NOLA_DEBUG_POISON") == "1"


def ceil_div(a, b):
    return -(-a // b)


def flat_block(numel, distribution, warps):
    """Entries per program of a flat walk over `numel` positions: whole Philox calls, one thread's
    calls per thread."""
    if INTERPRETED:
        return min(_INTERPRETED_BLOCK_MAX, max(_INTERPRETED_BLOCK_MIN, triton.next_power_of_2(numel)))
    return _CALLS_PER_THREAD[distribution] * (1 << COUNTER_SHIFT[distribution]) * 32 * warps


def seed_words(seed, stream):
    """Kernel arguments of a family: the 64-bit Philox key, then the stream's two counter words."""
    return seed, stream & MASK32, stream >> 32


def output_buffer(shape, dtype, device):
    """A buffer for kernel outputs, NaN-filled under NOLA_DEBUG_POISON=1."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def on_device(tensor):
    """Where to launch kernels on `tensor`: Triton launches on the current CUDA device and stream,
    so its device must be the current one."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
