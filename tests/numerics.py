"""Error measures shared by the tests."""

import math

import torch

# Rounding errors of random sign add up like a random walk: a sum of n terms in floating point is
# off by about sqrt(n) unit roundoffs relative to its size (Higham and Mary, "A new approach to
# probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019). LAMBDA standard
# deviations of margin cover unlucky draws and the one or two roundings of a scale or a cast.
LAMBDA = 6


def rel_err(value, reference):
    """Frobenius-norm relative error of `value` against a float64 `reference`."""
    reference = reference.double()
    return ((value.double() - reference).norm() / reference.norm().clamp_min(1e-300)).item()


def rounding_bound(dtype, *lengths):
    """The rel_err that a computation in `dtype` may have against the exact result when it chains
    sums of products over reductions of these lengths (in x A^T over in, then over rank, ...)
    in whatever order a library picks: LAMBDA * u * sum of sqrt(length), u the unit roundoff.
    Two such computations of one value differ by up to twice this."""
    unit_roundoff = torch.finfo(dtype).eps / 2
    return LAMBDA * unit_roundoff * sum(math.sqrt(max(n, 1)) for n in lengths)
