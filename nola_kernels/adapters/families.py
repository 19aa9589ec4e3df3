"""Basis families: factors whose bases are the same, mixed together in one pass that generates
each basis entry once for all of them. The factor cache mixes the adapters of one layer this way,
grouped generation the layers of one model (docs/adapters.md).

A family is what a factor's bases depend on: its role (A from alpha, B from beta), seed, shape,
basis count and distribution, and where it is mixed (backend, device, coefficient dtype).
"""

import collections
import typing

import torch

from ..api import nola_mix, nola_mix_grouped


class Family(typing.NamedTuple):
    role: str  # "A" or "B"
    seed: int
    shape: tuple[int, int]
    count: int  # k for A, l for B
    distribution: str
    backend: str
    device: torch.device
    dtype: torch.dtype


class Member(typing.NamedTuple):
    """One factor of a family: whose it is (`owner`: a layer, an index), its adapter, and the
    coefficients it is mixed from."""

    owner: object
    adapter: object
    coeffs: torch.Tensor


def mixing_coeffs(parameter):
    # A model cast to half precision casts the coefficients too; mixing wants float32 at least.
    return parameter if parameter.dtype in (torch.float32, torch.float64) else parameter.float()


def families(entries):
    """{Family: [Member]} of both factors of each (owner, adapter, backend) in `entries`, in
    their order."""
    found = collections.defaultdict(list)
    for owner, adapter, backend in entries:
        config = adapter.config
        for role, coeffs, seed, shape in (
            ("A", adapter.alpha, adapter.seed_a, (config.rank, adapter.in_features)),
            ("B", adapter.beta, adapter.seed_b, (adapter.out_features, config.rank)),
        ):
            coeffs = mixing_coeffs(coeffs)
            family = Family(
                role, seed, shape, coeffs.numel(), config.distribution, backend, coeffs.device, coeffs.dtype
            )
            found[family].append(Member(owner, adapter, coeffs))
    return found


def mix_family(family, members):
    """The factors of `members` in float32 (float64 for float64 coefficients), A with a0 added (the
    family fixes it), B times each adapter's scaling, from one nola_mix_grouped call. A lone
    member takes the ordinary mix on the family's backend, so that a single adapter's factors are
    the composed path's bit for bit."""
    coeffs = torch.stack([member.coeffs for member in members])
    options = dict(distribution=family.distribution, backend=family.backend)
    if len(members) == 1:
        mixed = nola_mix(coeffs[0], family.seed, family.shape, **options)[None]
    else:
        mixed = nola_mix_grouped(coeffs, family.seed, family.shape, **options)
    if family.role == "A":
        return (mixed + members[0].adapter.offset(family.device)).unbind(0)
    # mul.Scalar keeps the scaling as a number where `b * scaling` saves it as a tensor for the
    # backward: no step from the coefficients to a factor saves a tensor, so backwards of their
    # own (a reentrant checkpoint's recomputes) may each run through a factor (docs/adapters.md).
    return [
        torch.ops.aten.mul.Scalar(b, member.adapter.config.scaling)
        for b, member in zip(mixed.unbind(0), members, strict=True)
    ]


def mix_families(found):
    """{owner: (A, B)} from one mix_family call per family of `found` ({Family: [Member]}, which
    holds both families of each owner)."""
    factors = collections.defaultdict(dict)
    for family, members in found.items():
        for member, factor in zip(members, mix_family(family, members), strict=True):
            factors[member.owner][family.role] = factor
    return {owner: (pair["A"], pair["B"]) for owner, pair in factors.items()}


def mix_factors(adapters, backend):
    """[(A, B)] of each of `adapters` (as mix_family gives them) on `backend`, the adapters of
    one family mixed together."""
    mixed = mix_families(families((index, adapter, backend) for index, adapter in enumerate(adapters)))
    return [mixed[index] for index in range(len(adapters))]
