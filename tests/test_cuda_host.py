"""The CUDA sources without a GPU: the Philox header built for the host (g++) against
nola_basis bit for bit, its Philox calls (the key schedule added up per round, and the host's
folded RoundKeys that the generate.cu kernels read) against the oracle and the known answers, unknown
distribution codes refused, and every kernel compiled by nvcc for sm_80 and sm_90a without a
register spill."""

import ctypes
import math
import shutil
import struct
import subprocess

import pytest
import torch
from philox_oracle import philox
from ptxas_report import CSRC, compile_report, format_report, spilling
from test_official_family import (
    CASE_IDS,
    CASES,
    DTYPE_RULES,
    H200_THREADS,
    KNOWN_ANSWERS,
    KNOWN_K,
    KNOWN_NUMEL,
)
from test_philox import KAT

from nola_kernels import nola_basis
from nola_kernels.basis import COUNTER_SHIFT, DISTRIBUTIONS, basis_block
from nola_kernels.official_rng import (
    OfficialFamily,
    official_basis,
    official_block,
    official_distribution,
    parse_official,
)

# nola::Distribution (csrc/philox.cuh) of each contract name.
DISTRIBUTION_CODES = {"uniform": 0, "rademacher": 1, "uniform16_philox7": 2, "rademacher_philox7": 3}
UNKNOWN_CODES = [-1, 4, 2**31 - 1]

# docs/spec.md's known answers: its two 10-round vectors (in KAT) and the 7-round words behind its
# table of the _philox7 distributions' values.
SPEC_WORDS = [(7, (0, 1, 0, 0), (42, 0), (0x7D1A0DF5, 0x41167A22, 0x34BC33BE, 0x912201DA))]

# The header's two ways to run one Philox call: the key schedule added up per round, and the round
# keys computed once on the host with counter word 2 folded in (Family::folded_round_keys), as
# every generate.cu kernel reads them.
PHILOX_CALLS = ["nola_philox_words", "nola_philox_round_key_words"]


@pytest.fixture(scope="module")
def host_basis(tmp_path_factory):
    """csrc/philox.cuh compiled with g++ as a C library (csrc/host_basis.cpp)."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    library = tmp_path_factory.mktemp("host") / "host_basis.so"
    subprocess.run(
        ["g++", "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
         "-o", str(library), str(CSRC / "host_basis.cpp")],
        check=True,
    )  # fmt: skip
    return ctypes.CDLL(str(library))


@pytest.fixture(scope="module")
def grouped_entries(tmp_path_factory):
    """csrc/grouped_entries.cuh (the grouped kernels' entries of a call) compiled with g++
    (tests/grouped_entries.cpp)."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    library = tmp_path_factory.mktemp("grouped") / "grouped_entries.so"
    subprocess.run(
        ["g++", "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", f"-I{CSRC}",
         "-o", str(library), str(CSRC.parent / "tests" / "grouped_entries.cpp")],
        check=True,
    )  # fmt: skip
    return ctypes.CDLL(str(library))


def _host_block(library, seed, stream, i_start, count, n_start, numel, code):
    """(status, entries) of nola_basis_block for nola::Distribution `code`: unwritten entries NaN."""
    out = torch.full((count, numel), float("nan"))
    status = library.nola_basis_block(
        ctypes.c_uint64(seed), ctypes.c_uint64(stream), ctypes.c_uint32(i_start), ctypes.c_uint32(count),
        ctypes.c_uint64(n_start), ctypes.c_uint64(numel), ctypes.c_int(code), ctypes.c_void_p(out.data_ptr()),
    )  # fmt: skip
    return status, out


def _host_basis_block(library, seed, stream, i_start, count, n_start, numel, distribution):
    status, out = _host_block(library, seed, stream, i_start, count, n_start, numel, DISTRIBUTION_CODES[distribution])
    assert status == 0
    return out


def _bits(t):
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


def _philox_words(library, call, rounds, counter, key):
    words = (ctypes.c_uint32 * 4)()
    status = getattr(library, call)(rounds, (ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), words)
    return status, tuple(words)


@pytest.mark.parametrize("call", PHILOX_CALLS)
@pytest.mark.parametrize("rounds, counter, key, expected", KAT + SPEC_WORDS)
def test_known_answer_vectors(host_basis, call, rounds, counter, key, expected):
    assert _philox_words(host_basis, call, rounds, counter, key) == (0, expected)


@pytest.mark.parametrize("call", PHILOX_CALLS)
@pytest.mark.parametrize("rounds", [7, 10])
def test_philox_matches_the_oracle_on_random_counters_and_keys(host_basis, call, rounds):
    generator = torch.Generator().manual_seed(rounds)
    for words in torch.randint(0, 2**32, (200, 6), generator=generator, dtype=torch.int64).tolist():
        counter, key = tuple(words[:4]), tuple(words[4:])
        assert _philox_words(host_basis, call, rounds, counter, key) == (0, philox(counter, key, rounds)), words


@pytest.mark.parametrize("call", PHILOX_CALLS)
@pytest.mark.parametrize("rounds", [0, 6, 11])
def test_a_round_count_not_built_is_refused(host_basis, call, rounds):
    assert _philox_words(host_basis, call, rounds, (1, 2, 3, 4), (5, 6)) == (-1, (0, 0, 0, 0))


@pytest.mark.parametrize("word", [0, 1, 255, 256, 511, 512, 2**23, 2**31 - 1, 2**31, 2**32 - 512, 2**32 - 1])
def test_uniform_value_of_extreme_words(host_basis, word):
    host_basis.nola_uniform_value.restype = ctypes.c_float
    expected = (((word >> 8) | 1) - 2**23) * 2.0**-23  # docs/spec.md, exact in float32
    assert host_basis.nola_uniform_value(ctypes.c_uint32(word)) == expected


def test_every_contract_distribution_has_a_code():
    assert set(DISTRIBUTION_CODES) == set(DISTRIBUTIONS)


def test_uniform16_value_of_every_half_word(host_basis):
    host_basis.nola_uniform16_value.restype = ctypes.c_float
    for half in range(1 << 16):
        # An odd multiplier permutes the 16-bit values: every low half and every high half once.
        word = half | (((half * 40503) & 0xFFFF) << 16)
        for h, value in enumerate((half, word >> 16)):
            expected = ((value | 1) - 2**15) * 2.0**-15
            assert host_basis.nola_uniform16_value(ctypes.c_uint32(word), ctypes.c_int(h)) == expected, (word, h)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize(
    "seed, stream, k, shape",
    [
        (0, 0, 3, (1, 1)),
        (2**32, 0, 5, (7, 13)),
        (2**32 + 12345, 1, 4, (3, 131)),
        (2**63 - 1, 2**40 + 3, 2, (129, 5)),
    ],
)
def test_header_matches_nola_basis(host_basis, distribution, seed, stream, k, shape):
    rows, cols = shape
    expected = nola_basis(seed, k, shape, stream=stream, distribution=distribution).view(k, -1)
    got = _host_basis_block(host_basis, seed, stream, 0, k, 0, rows * cols, distribution)
    assert torch.equal(_bits(got), _bits(expected))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_header_matches_far_positions_and_indices(host_basis, distribution):
    # Odd starts, the last basis indices below 2^32 and positions near the 2^34 limit.
    for i_start, n_start in [(2**32 - 3, 5), (7, 2**34 - 300), (1, 131)]:
        expected = basis_block(2**40 + 9, 1, i_start, i_start + 3, n_start, n_start + 257, distribution)
        got = _host_basis_block(host_basis, 2**40 + 9, 1, i_start, 3, n_start, 257, distribution)
        assert torch.equal(_bits(got), _bits(expected)), (i_start, n_start)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize(
    "seed, stream, i_start, first_call",
    [(0, 0, 0, 0), (2**32 + 12345, 1, 7, 3), (2**63 - 1, 2**40 + 3, 2**32 - 3, 5), (2**40 + 9, 1, 1, None)],
)
def test_grouped_kernels_read_the_basis_from_each_call(grouped_entries, distribution, seed, stream, i_start,
                                                       first_call):  # fmt: skip
    # Each Philox call of basis index i fills positions call * entries + e (uniform: 4 entries,
    # uniform16: 8, rademacher: 128); None takes the last calls below 2^34 positions.
    per_call = 1 << COUNTER_SHIFT[distribution]
    calls, count = 5, 3
    if first_call is None:
        first_call = 2**34 // per_call - calls
    status, out = _grouped_entries(
        grouped_entries, seed, stream, DISTRIBUTION_CODES[distribution], i_start, count, first_call, calls, per_call
    )
    n_start = first_call * per_call
    expected = basis_block(seed, stream, i_start, i_start + count, n_start, n_start + calls * per_call, distribution)
    assert status == 0 and torch.equal(_bits(out), _bits(expected))


def _grouped_entries(library, seed, stream, code, i_start, count, first_call, calls, per_call):
    """(status, entries) of nola_grouped_entries for nola::Distribution `code`, `per_call` entries
    a call: unwritten entries NaN."""
    out = torch.full((count, calls * per_call), float("nan"))
    status = library.nola_grouped_entries(
        ctypes.c_uint64(seed), ctypes.c_uint64(stream), ctypes.c_int(code), ctypes.c_uint32(i_start),
        ctypes.c_uint32(count), ctypes.c_uint64(first_call), ctypes.c_uint64(calls), ctypes.c_void_p(out.data_ptr()),
    )  # fmt: skip
    return status, out


@pytest.mark.parametrize("code", UNKNOWN_CODES)
def test_an_unknown_distribution_code_is_refused_before_any_entry(host_basis, grouped_entries, code):
    # A raw code that names no distribution fails; it is not taken for uniform.
    status, out = _host_block(host_basis, 3, 0, 0, 2, 0, 130, code)
    assert status == -1 and out.isnan().all()
    status, out = _grouped_entries(grouped_entries, 3, 0, code, 0, 2, 0, 3, 4)
    assert status == -1 and out.isnan().all()


def test_default_mix_scale_is_the_python_apis_rounding(host_basis):
    # 1/sqrt(k) rounded once from double (api._mix_scale, then float32), not 1.0f / sqrtf(k),
    # which differs by an ulp for k = 6 and many others: fused and composed factors scale alike.
    host_basis.nola_default_mix_scale.restype = ctypes.c_float
    for k in [*range(1, 20001), 2**31 - 1, 2**32]:
        expected = torch.tensor(1.0 / math.sqrt(k), dtype=torch.float64).float().item()
        assert host_basis.nola_default_mix_scale(ctypes.c_uint64(k)) == expected, k


@pytest.fixture(scope="module")
def ptxas_entries():
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc (the CUDA toolkit)")
    return compile_report()


@pytest.fixture(scope="module")
def workspace_sizes(tmp_path_factory):
    """tests/workspace_sizes.cu linked with the kernels: their host-side planning, runnable here."""
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc (the CUDA toolkit)")
    program = tmp_path_factory.mktemp("plans") / "workspace_sizes"
    sources = [CSRC / name for name in ("generate.cu", "gemm.cu", "lowrank.cu")]
    subprocess.run(
        ["nvcc", "-std=c++17", "-gencode=arch=compute_80,code=sm_80", f"-I{CSRC}", "-o", str(program),
         str(CSRC.parent / "tests" / "workspace_sizes.cu"), *map(str, sources)],
        check=True,
    )  # fmt: skip

    def sizes(kind, problems):
        lines = "".join(" ".join(map(str, (kind, *problem))) + "\n" for problem in problems)
        result = subprocess.run([str(program)], input=lines, capture_output=True, text=True, check=True)
        return [int(line) for line in result.stdout.split()]

    return sizes


def test_workspace_planning_handles_edge_shapes(workspace_sizes):
    # tokens, in, out, rank, k, l, distribution, SM count
    problems = [
        (0, 64, 32, 4, 8, 8, 0, 132),  # no tokens: empty reductions
        (3, 1, 3, 1, 2048, 7, 0, 132),  # one input feature, a long basis
        (1, 1, 1, 1, 1, 1, 1, 1),
        (8192, 4096, 4096, 64, 512, 512, 0, 132),
        (257, 300, 500, 31, 33, 40, 1, 108),
        (257, 300, 500, 31, 33, 40, 2, 108),  # uniform16: 8 entries per call
        (130, 1024, 1024, 16, 512, 512, 3, 132),
        (5, 37, 11, 3, 0, 0, 0, 132),  # k = l = 0: the factors are their offsets
        (16, 64, 32, 0, 8, 8, 0, 132),  # rank 0 and no output features: factors with no entries
        (16, 64, 0, 4, 8, 8, 1, 132),
    ]
    for problem, size in zip(problems, workspace_sizes("lowrank", problems), strict=True):
        tokens, in_f, out_f, rank = problem[:4]
        factors_and_grad_h = 4 * (rank * in_f + out_f * rank + tokens * rank)
        assert factors_and_grad_h <= size <= factors_and_grad_h + (64 << 20), problem


def test_generation_without_positions_plans_no_workspace(workspace_sizes):
    # distribution, numel, k, mixes, projects, SM count: an empty matrix (or factor) is no launch,
    # not a division by its zero slices.
    problems = [
        (0, 0, 5, 1, 0, 132), (1, 0, 3, 0, 1, 132), (0, 0, 7, 1, 1, 1), (1, 0, 0, 1, 1, 108),
        (2, 0, 4, 1, 1, 132), (3, 0, 4, 0, 1, 132),
    ]  # fmt: skip
    assert workspace_sizes("generate", problems) == [0] * len(problems)


@pytest.mark.parametrize("k", [2**20, 2**24, 2**31 + 5, 2**32])
@pytest.mark.parametrize("sm_count", [1, 132])
def test_projection_partials_stay_bounded_for_long_bases(workspace_sizes, k, sm_count):
    # The projection partials are (blocks x k) floats: blocks shrink as k grows (the k-split
    # fills the GPU instead), so they stay within 16 MiB, or one row of k where k alone is larger.
    bound = 4 * max(1 << 22, k) + 256
    for distribution in DISTRIBUTION_CODES.values():
        projection, both = workspace_sizes(
            "generate",
            [(distribution, 1 << 20, k, 0, 1, sm_count), (distribution, 1 << 20, k, 1, 1, sm_count)],
        )
        assert projection <= bound, (distribution, k, sm_count, projection)
        assert both <= bound + (16 << 20), (distribution, k, sm_count, both)


def test_every_kernel_compiles_without_register_spills(ptxas_entries):
    print("\n" + "\n".join(format_report(ptxas_entries)))
    assert ptxas_entries, "nvcc reported no kernels"
    assert {entry.arch for entry in ptxas_entries} == {"sm_80", "sm_90a"}
    grouped = [entry.kernel for entry in ptxas_entries if entry.source == "grouped.cu"]
    for kernel in ("mix_grouped_kernel", "project_grouped_kernel"):
        assert any(kernel in name for name in grouped), kernel
    assert not spilling(ptxas_entries), "\n".join(format_report(spilling(ptxas_entries)))


# -- the official CUDA layout families (csrc/official.cuh) ------------------------------------------

# nola::OfficialDtype (csrc/official.cuh) of each dtype.
OFFICIAL_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class _OfficialFamily(ctypes.Structure):
    """nola::OfficialFamily."""

    _fields_ = [("seed", ctypes.c_uint64), ("resident_threads", ctypes.c_uint32), ("dtype", ctypes.c_int),
                ("legacy", ctypes.c_bool)]  # fmt: skip


def _official_block(library, seed, family, k, numel, i_start, i_stop, n_start, n_stop, dtype_code=None):
    """(status, entries) of nola_official_block: unwritten entries NaN."""
    code = OFFICIAL_DTYPE_CODES[family.dtype] if dtype_code is None else dtype_code
    request = _OfficialFamily(seed, family.resident_threads, code, family.uniform_rule == "legacy")
    out = torch.full((i_stop - i_start, n_stop - n_start), float("nan"))
    status = library.nola_official_block(
        ctypes.byref(request), ctypes.c_uint64(k), ctypes.c_uint64(numel), ctypes.c_uint32(i_start),
        ctypes.c_uint32(i_stop - i_start), ctypes.c_uint64(n_start), ctypes.c_uint64(n_stop - n_start),
        ctypes.c_void_p(out.data_ptr()),
    )  # fmt: skip
    return status, out


@pytest.mark.parametrize("dtype, rule", DTYPE_RULES)
@pytest.mark.parametrize("seed, layout, k, shape", CASES, ids=CASE_IDS)
def test_official_entries_match_the_reference_and_official_basis(host_basis, seed, layout, k, shape, dtype, rule):
    family = parse_official(official_distribution(layout, dtype, rule))
    numel = shape[0] * shape[1]
    status, got = _official_block(host_basis, seed, family, k, numel, 0, k, 0, numel)
    assert status == 0
    assert torch.equal(_bits(got), _bits(official_block(family, seed, k, numel, 0, k, 0, numel)))
    # The ops' default scale times the entries, rounded once to the dtype, is the official basis.
    scale = torch.tensor(1 / math.sqrt(k), dtype=torch.float32)
    expected = official_basis(seed, k, shape, layout=layout, dtype=dtype, uniform_rule=rule).view(k, numel)
    assert torch.equal(_bits((got * scale).to(dtype)), _bits(expected))


@pytest.mark.parametrize("dtype, rule", DTYPE_RULES)
def test_official_entries_of_a_block_inside_the_basis(host_basis, dtype, rule):
    # A block that starts past matrix 0 and position 0, cursors stepping over the threads' wrap.
    family = OfficialFamily(2048, dtype, rule)
    k, numel = 9, 1111
    status, got = _official_block(host_basis, 2**40 + 9, family, k, numel, 3, 8, 517, 1000)
    assert status == 0
    assert torch.equal(_bits(got), _bits(official_block(family, 2**40 + 9, k, numel, 3, 8, 517, 1000)))


@pytest.mark.parametrize("dtype, rule", DTYPE_RULES)
def test_official_entries_past_2_32_flat_indices(host_basis, dtype, rule):
    # The last matrices of a 2^40-entry basis: flat indices, stripes and counters past 32 bits.
    family = OfficialFamily(270336, dtype, rule)
    k, numel = 1 << 20, 1 << 20
    status, got = _official_block(host_basis, 77, family, k, numel, k - 3, k, numel - 300, numel)
    assert status == 0
    assert torch.equal(_bits(got), _bits(official_block(family, 77, k, numel, k - 3, k, numel - 300, numel)))


@pytest.mark.parametrize("position", list(KNOWN_ANSWERS))
def test_official_entries_have_the_spec_known_answers(host_basis, position):
    # The last known answer's bfloat16 value rounds to 1: -1 under the current rule, 1 under the legacy one.
    i, n = position
    bits, bf16_current, bf16_legacy, fp16 = KNOWN_ANSWERS[position]
    expected = {(torch.float32, "current"): struct.unpack("<f", struct.pack("<I", bits))[0],
                (torch.bfloat16, "current"): bf16_current, (torch.bfloat16, "legacy"): bf16_legacy,
                (torch.float16, "current"): fp16, (torch.float16, "legacy"): fp16}  # fmt: skip
    for (dtype, rule), value in expected.items():
        family = OfficialFamily(H200_THREADS, dtype, rule)
        status, got = _official_block(host_basis, 42, family, KNOWN_K, KNOWN_NUMEL, i, i + 1, n, n + 1)
        assert status == 0 and got.item() == value, (dtype, rule)


def test_official_entries_rounding_to_one_follow_the_rule(host_basis):
    # Half-precision draws that round up to 1: -1 under the current rule, 1 under the legacy one.
    k, numel = 4, 40000
    for dtype in (torch.bfloat16, torch.float16):
        blocks = {}
        for rule in ("current", "legacy"):
            status, blocks[rule] = _official_block(host_basis, 5, OfficialFamily(4096, dtype, rule), k, numel, 0, k, 0, numel)
            assert status == 0
        rounded_to_one = blocks["legacy"] == 1
        assert rounded_to_one.any(), dtype
        assert (blocks["current"][rounded_to_one] == -1).all(), dtype
        assert torch.equal(blocks["current"][~rounded_to_one], blocks["legacy"][~rounded_to_one]), dtype


def test_an_unknown_official_dtype_code_is_refused_before_any_entry(host_basis):
    status, out = _official_block(host_basis, 3, OfficialFamily(256), 2, 10, 0, 2, 0, 10, dtype_code=3)
    assert status == -1 and out.isnan().all()
