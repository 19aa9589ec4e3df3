"""Launch settings shared by the Triton kernels: whether they run in Triton's CPU interpreter,
block sizes and grid targets, the Philox key and counter words of a basis family, and the device
a launch runs on."""

import contextlib

import torch
import triton

# The kernels are compiled or interpreted as their @triton.jit decorators run (at import). The
# interpreter runs each program one after another in NumPy, at a cost per operation more than
# per entry, so it gets few programs and wide tiles.
INTERPRETED = bool(triton.knobs.runtime.interpret)

# Enough programs to fill a Hopper GPU (132 SMs) several times over; a few in the interpreter,
# so that the split code paths still run in CPU tests.
SPLIT_TARGET_PROGRAMS = 4 if INTERPRETED else 528
# Flat blocks are whole rademacher Philox calls (128 entries), so every call is made once.
_FLAT_BLOCK_MIN, _FLAT_BLOCK_MAX = 128, 1024
# Basis matrices generated together per loop step: one on a GPU (registers hold the tile), many
# in the interpreter.
BLOCK_I = 32 if INTERPRETED else 1
MASK32 = 0xFFFFFFFF


def ceil_div(a, b):
    return -(-a // b)


def flat_block(numel):
    """Entries per program for a flat walk over `numel` positions."""
    return min(_FLAT_BLOCK_MAX, max(_FLAT_BLOCK_MIN, triton.next_power_of_2(numel)))


def seed_words(seed, stream):
    """Kernel arguments of a family: the 64-bit Philox key, then the stream's two counter words."""
    return seed, stream & MASK32, stream >> 32


def on_device(tensor):
    """Where to launch kernels on `tensor`: Triton launches on the current CUDA device and stream,
    so its device must be the current one."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
