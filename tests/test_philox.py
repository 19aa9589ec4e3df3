"""Philox4x32 against the Random123 known-answer vectors and the scalar oracle."""

import pytest
import torch
from philox_oracle import philox

from nola_kernels.philox import philox4x32

# rounds, counter, key, expected output (Random123 kat_vectors)
KAT = [
    (7, (0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]  # fmt: skip


@pytest.mark.parametrize("rounds, counter, key, expected", KAT)
def test_known_answer_vectors(rounds, counter, key, expected):
    words = philox4x32([torch.tensor([c]) for c in counter], key, rounds=rounds)
    assert tuple(int(w) for w in words) == expected
    assert philox(counter, key, rounds) == expected


def test_tensor_philox_matches_oracle_on_random_counters():
    gen = torch.Generator().manual_seed(1234)
    counters = torch.randint(0, 2**32, (4, 64), generator=gen, dtype=torch.int64)
    key = tuple(int(v) for v in torch.randint(0, 2**32, (2,), generator=gen, dtype=torch.int64))
    words = torch.stack(philox4x32(list(counters), key))
    for j in range(counters.shape[1]):
        expected = philox(tuple(int(c) for c in counters[:, j]), key)
        assert tuple(int(w) for w in words[:, j]) == expected
