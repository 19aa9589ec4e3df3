"""A scalar, pure-Python oracle for Philox4x32 and the NOLA-Philox v1 contract, written straight
from docs/spec.md with plain ints, independent of the tensor code it checks."""

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
