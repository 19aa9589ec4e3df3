"""A scalar, pure-Python oracle for Philox4x32 and the NOLA-Philox v1 contract, written straight
from docs/spec.md with plain ints, independent of the tensor code it checks."""

import struct
from fractions import Fraction

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
U32 = 2**32


def philox(counter, key, rounds=10):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) % U32, (k1 + W1) % U32
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (p1 // U32) ^ c1 ^ k0, p1 % U32, (p0 // U32) ^ c3 ^ k1, p0 % U32
    return c0, c1, c2, c3


def element(seed, stream, i, n, distribution="uniform"):
    """Entry (i, n) of the basis family (seed, stream), as an exact Fraction."""
    key = (seed % U32, seed // U32)
    rounds = 7 if distribution.endswith("_philox7") else 10
    if distribution == "uniform":
        x = philox((n // 4, i, stream % U32, stream // U32), key, rounds)[n % 4]
        m = (x // 256) | 1
        return Fraction(m - 2**23, 2**23)
    if distribution == "uniform16_philox7":
        x = philox((n // 8, i, stream % U32, stream // U32), key, rounds)[(n % 8) // 2]
        m = ((x >> (16 * (n % 2))) % 2**16) | 1
        return Fraction(m - 2**15, 2**15)
    x = philox((n // 128, i, stream % U32, stream // U32), key, rounds)[(n // 32) % 4]
    return Fraction(1 if (x >> (n % 32)) & 1 == 0 else -1)


def _float32(x):
    """x (a float whose value a double holds exactly) rounded to float32, to nearest even."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _bfloat16(x):
    """A float32 value rounded to bfloat16, to nearest even, on its bits."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def _float16(x):
    return struct.unpack("<e", struct.pack("<e", x))[0]


ROUNDINGS = {"float32": lambda x: x, "bfloat16": _bfloat16, "float16": _float16}


def official_element(seed, resident_threads, k, numel, i, n, dtype="float32", rule="current"):
    """Entry (i, n) of an official CUDA layout family's (k, numel) basis (docs/spec.md), unscaled,
    as a float: torch's CUDA uniform_(-1, 1) value at li = i * numel + n in `dtype` under `rule`."""
    threads = min(-(-k * numel // 256) * 256, resident_threads)
    li = i * numel + n
    word = philox((li // (4 * threads), 0, li % threads, 0), (seed % U32, seed // U32))[(li % (4 * threads)) // threads]
    u = _float32(_float32(word) * 2.0**-32 + 2.0**-33)
    value = _float32(2 * u - 1)
    if value == 1:
        value = -1.0
    value = ROUNDINGS[dtype](value)
    return -1.0 if rule == "current" and value == 1 else value
