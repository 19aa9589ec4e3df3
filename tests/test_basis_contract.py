"""The NOLA-Philox contract (docs/spec.md): nola_basis on every device against the scalar
oracle, element by element, at the edges of every counter word; and block generation independent
of the blocking."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from philox_oracle import element

from nola_kernels import nola_basis
from nola_kernels.basis import DISTRIBUTIONS, basis_block, iter_blocks


def _check_against_oracle(seed, k, shape, stream, distribution, indices, device):
    basis = nola_basis(seed, k, shape, stream=stream, distribution=distribution, device=device)
    assert basis.shape == (k, *shape) and basis.dtype == torch.float32 and basis.device == device
    basis = basis.cpu()
    cols = shape[1]
    for i, n in indices:
        expected = element(seed, stream, i, n, distribution)
        assert basis[i, n // cols, n % cols].item() == float(expected), (seed, stream, i, n)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize(
    "seed, stream, shape",
    [
        (0, 0, (3, 7)),  # C not a multiple of 4
        (2**32, 0, (5, 13)),  # seed needs its high key word
        (2**63 - 1, 2**63 - 1, (1, 3)),  # R*C < 4, every word at its limit
        (0x123456789ABCDEF, 2**32 + 5, (2, 1)),  # stream needs its high counter word
        (42, 1, (1, 1)),
        (7, 3, (9, 130)),  # rademacher: more than one Philox call per row
        (2**40 + 1, 2**35, (37, 129)),
    ],
)
def test_every_element_matches_oracle(device, seed, stream, shape, distribution):
    k = 3
    numel = shape[0] * shape[1]
    _check_against_oracle(
        seed, k, shape, stream, distribution, [(i, n) for i in range(k) for n in range(numel)], device
    )


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_large_basis_index_and_position(distribution):
    # i near 2^32 and n near 2^34 are reached through basis_block, without a 2^34-entry tensor.
    seed, stream = 2**40 + 3, 2**33
    i_start, n_start = 2**32 - 3, 2**34 - 300
    block = basis_block(seed, stream, i_start, 2**32, n_start, 2**34, distribution)
    for di in range(3):
        for dn in (0, 1, 2, 3, 127, 128, 299):
            expected = element(seed, stream, i_start + di, n_start + dn, distribution)
            assert block[di, dn].item() == float(expected)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    stream=st.integers(0, 2**63 - 1),
    i=st.integers(0, 2**32 - 1),
    n=st.integers(0, 2**34 - 1),
    distribution=st.sampled_from(DISTRIBUTIONS),
)
def test_random_elements_match_oracle(seed, stream, i, n, distribution):
    block = basis_block(seed, stream, i, i + 1, n, n + 1, distribution)
    assert block.item() == float(element(seed, stream, i, n, distribution))


def test_uniform_values_are_odd_multiples_inside_open_interval():
    basis = nola_basis(99, 8, (64, 64))
    assert basis.abs().max() < 1
    scaled = basis.double() * 2**23
    assert torch.equal(scaled, scaled.round())
    assert torch.all(scaled.long() % 2 != 0)
    # A fair uniform(-1, 1): mean 0 and variance 1/3 within sampling error (32768 draws).
    assert abs(basis.mean().item()) < 0.02
    assert abs(basis.var().item() - 1 / 3) < 0.01


def test_rademacher_values_are_signs_with_both_signs_present():
    basis = nola_basis(5, 4, (16, 33), distribution="rademacher")
    assert set(basis.unique().tolist()) == {-1.0, 1.0}
    assert abs(basis.mean().item()) < 0.1


def test_families_differ_by_seed_stream_and_index():
    base = nola_basis(1, 2, (4, 8))
    assert not torch.equal(base, nola_basis(2, 2, (4, 8)))
    assert not torch.equal(base, nola_basis(1, 2, (4, 8), stream=1))
    assert not torch.equal(base[0], base[1])


def test_shape_only_reshapes_the_flat_positions():
    # Entry (i, row, col) depends only on n = row * C + col.
    assert torch.equal(nola_basis(3, 2, (6, 10)).reshape(2, -1), nola_basis(3, 2, (15, 4)).reshape(2, -1))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("budget", [1, 200, 4096, 40_000, 1 << 22])
def test_blocked_generation_is_bit_identical_for_any_budget(distribution, budget):
    k, shape = 5, (7, 93)
    reference = nola_basis(17, k, shape, stream=3, distribution=distribution).reshape(k, -1)
    covered = torch.zeros(k, shape[0] * shape[1], dtype=torch.int64)
    for i0, i1, n0, n1 in iter_blocks(k, shape[0] * shape[1], distribution, budget):
        block = basis_block(17, 3, i0, i1, n0, n1, distribution)
        assert torch.equal(block, reference[i0:i1, n0:n1])
        covered[i0:i1, n0:n1] += 1
    assert torch.all(covered == 1)


def test_nola_basis_does_not_depend_on_the_chunk_budget(set_budget):
    reference = nola_basis(8, 6, (11, 50))
    set_budget(300)
    assert torch.equal(nola_basis(8, 6, (11, 50)), reference)


def test_basis_does_not_depend_on_thread_count():
    reference = nola_basis(8, 16, (64, 64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(nola_basis(8, 16, (64, 64)), reference)
    finally:
        torch.set_num_threads(threads)


# docs/spec.md's known answers: family seed 42, stream 0, basis index 1, positions 0..7.
KNOWN_ANSWERS = {
    "uniform": ([-4005703, -147619, -5249223, -1396989, -6159485, -1539841, 1306421, 5936315], 2.0**-23),
    "rademacher": ([-1, -1, 1, 1, -1, -1, 1, -1], 1.0),
    "uniform16_philox7": ([-29195, -741, -1501, -16105, -19521, -19267, -32293, 4387], 2.0**-15),
    "rademacher_philox7": ([-1, 1, -1, 1, -1, -1, -1, -1], 1.0),
}


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_known_answers(distribution):
    integers, unit = KNOWN_ANSWERS[distribution]
    expected = torch.tensor(integers, dtype=torch.float32) * unit
    assert torch.equal(nola_basis(42, 2, (1, 8), distribution=distribution)[1, 0], expected)
    assert [element(42, 0, 1, n, distribution) * (1 / unit) for n in range(8)] == integers
