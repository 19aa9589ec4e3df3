"""The Triton kernels themselves: generated tiles bit for bit against nola_basis for several
tilings, mix/project against the PyTorch backend, and the fused low-rank product against the
float64 reference. On the CPU they run in Triton's interpreter (TRITON_INTERPRET=1, as
`make test` sets); GPU variants run where CUDA is present."""

import pytest
import torch
from numerics import rel_err, rounding_bound
from philox_oracle import element

from nola_kernels import available_backends, nola_basis, nola_matmul, nola_mix, nola_project
from nola_kernels.backends import get_backend
from nola_kernels.basis import COUNTER_SHIFT, DISTRIBUTIONS
from nola_kernels.lowrank import LowRankShape
from nola_kernels.reference import naive_matmul
from nola_kernels.routing import lowrank_path

# Skipped only without Triton: where Triton imports, a backend that does not (a stale install,
# say) fails here rather than skipping every test.
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from nola_kernels.triton_kernels import lowrank, mix_project  # noqa: E402
from nola_kernels.triton_kernels.launch import BLOCK_I, FACTOR_BLOCK_I, INTERPRETED  # noqa: E402
from nola_kernels.triton_kernels.philox_tiles import basis_tile, mixed_tile, projection_units  # noqa: E402

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif("triton" not in available_backends("cpu"), reason="no interpreter")),
    pytest.param("cuda", marks=pytest.mark.gpu),
]
V11_DISTRIBUTIONS = ["uniform16_philox7", "rademacher_philox7"]


@pytest.fixture(autouse=True)
def _fused_unless_told():
    """These tests check the fused kernels: nola_matmul runs them at any shape, unless a test
    forces the composed path."""
    with lowrank_path("fused"):
        yield


@triton.jit
def _store_tiles(
    out_ptr, seed, stream_lo, stream_hi, index, n_rows, n_cols,
    ROWS: tl.constexpr, WIDTH: tl.constexpr, DISTRIBUTION: tl.constexpr, ALIGNED: tl.constexpr,
):  # fmt: skip
    """Writes basis matrix `index` of shape (n_rows, n_cols) tile by tile (ROWS x WIDTH)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    col0 = tl.program_id(1) * WIDTH
    cols = col0 + tl.arange(0, WIDTH)
    indices = tl.zeros((ROWS,), tl.int64) + index
    tile = basis_tile(
        seed, stream_lo, stream_hi, indices, rows.to(tl.int64) * n_cols + col0, WIDTH, DISTRIBUTION, ALIGNED
    )
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(out_ptr + rows[:, None] * n_cols + cols[None, :], tile, mask=mask)


def _tiles(seed, stream, index, shape, distribution, tiling, aligned, device):
    out = torch.full(shape, float("nan"), device=device)
    rows, width = tiling
    grid = (triton.cdiv(shape[0], rows), triton.cdiv(shape[1], width))
    _store_tiles[grid](
        out, seed, stream & 0xFFFFFFFF, stream >> 32, index, *shape,
        ROWS=rows, WIDTH=width, DISTRIBUTION=distribution, ALIGNED=aligned,
    )  # fmt: skip
    return out.cpu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize(
    "shape",
    [(37, 129), (9, 12), (5, 256), (2, 3)],  # C: not a multiple of 4 or of a block; whole calls; < 4
    ids=lambda s: f"{s[0]}x{s[1]}",
)
@pytest.mark.parametrize("tiling", [(16, 16), (4, 128), (2, 256)], ids=lambda t: f"tile{t[0]}x{t[1]}")
def test_tiles_are_bit_identical_to_nola_basis(device, distribution, shape, tiling):
    seed, stream, index = 2**40 + 1, 2**35 + 3, 3
    expected = nola_basis(seed, index + 1, shape, stream=stream, distribution=distribution)[index]
    call = 1 << COUNTER_SHIFT[distribution]
    # One entry per call wherever the layout allows it, and the entry-wise path everywhere.
    for aligned in {False, shape[1] % call == 0 and tiling[1] % call == 0}:
        tiles = _tiles(seed, stream, index, shape, distribution, tiling, aligned, device)
        assert torch.equal(tiles, expected), aligned


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("distribution", V11_DISTRIBUTIONS)
def test_philox7_tiles_match_the_scalar_oracle(device, distribution):
    # Philox4x32-7 and the entry order within a call (uniform16: entry 2w + h is half h of word
    # w, the low half first), against docs/spec.md written out with plain ints.
    seed, stream, shape = 2**33 + 5, 2**32 + 9, (3, 256)
    tiles = _tiles(seed, stream, 2, shape, distribution, (4, 256), True, device)
    for n in range(0, shape[0] * shape[1], 7):
        assert tiles.view(-1)[n].item() == element(seed, stream, 2, n, distribution), n



@triton.jit
def _store_mixed_tile(
    coeffs_ptr, k, grad_ptr, out_ptr, projection_ptr, seed, n_rows, n_cols,
    ROWS: tl.constexpr, WIDTH: tl.constexpr, BLOCK_I: tl.constexpr, DISTRIBUTION: tl.constexpr,
    ALIGNED: tl.constexpr, UNITS: tl.constexpr,
):  # fmt: skip
    """One factor tile of the fused kernels: the first ROWS x WIDTH entries of an (n_rows, n_cols)
    mix of coeffs, and its projection partials."""
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, WIDTH)
    valid = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    positions = rows[:, None] * n_cols + cols[None, :]
    grad = tl.load(grad_ptr + positions, mask=valid, other=0.0)
    tile = mixed_tile(
        coeffs_ptr, 0, k, 1.0, seed, 0, 0, rows.to(tl.int64) * n_cols, valid, grad,
        projection_ptr + tl.arange(0, UNITS).to(tl.int64) * k, WIDTH, BLOCK_I, DISTRIBUTION, ALIGNED, True, 128,
    )  # fmt: skip
    tl.store(out_ptr + positions, tile, mask=valid)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "case",
    [
        # distribution, matrix, tile, aligned: rows of whole calls; rademacher runs of calls (the
        # tile's last rows past the matrix); the entry-wise path
        ("rademacher", (8, 128), (8, 128), True),
        ("rademacher_philox7", (50, 8), (64, 8), True),
        ("rademacher", (30, 4), (32, 4), True),
        ("uniform", (8, 128), (8, 128), True),
        ("uniform16_philox7", (8, 64), (8, 64), True),
        ("rademacher", (5, 12), (8, 16), False),
    ],
    ids=lambda c: f"{c[0]}-{c[1][0]}x{c[1][1]}-{'aligned' if c[3] else 'entrywise'}",
)
def test_factor_tiles_mix_one_hot_coefficients_to_the_basis_bit_for_bit(device, case):
    distribution, shape, (rows, width), aligned = case
    seed, k = 2**40 + 13, 37
    basis = nola_basis(seed, k, shape, distribution=distribution)
    grad = torch.randn(shape, device=device)
    units = projection_units(rows, width, distribution, aligned)
    for index in (0, 20, k - 1):
        coeffs = torch.zeros(k, device=device)
        coeffs[index] = 1.0
        out = torch.full(shape, float("nan"), device=device)
        partials = torch.full((units, k), float("nan"), device=device)
        _store_mixed_tile[(1,)](
            coeffs, k, grad, out, partials, seed, *shape, ROWS=rows, WIDTH=width, BLOCK_I=FACTOR_BLOCK_I,
            DISTRIBUTION=distribution, ALIGNED=aligned, UNITS=units,
        )  # fmt: skip
        assert torch.equal(out.cpu(), basis[index]), index
    expected = torch.einsum("kn,n->k", basis.reshape(k, -1).double(), grad.cpu().reshape(-1).double())
    assert rel_err(partials.cpu().sum(0), expected) <= 1e-5


MIX_CASES = [
    # k, shape: several flat blocks, several basis-index splits, a single entry
    (100, (40, 33)),
    (600, (3, 50)),
    (1, (1, 1)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("k, shape", MIX_CASES)
def test_mix_and_project_match_the_torch_backend(device, distribution, k, shape):
    coeffs, grad = torch.randn(k, device=device), torch.randn(shape, device=device)
    family = dict(stream=2**33 + 1, distribution=distribution)
    mixed = nola_mix(coeffs, 2**40 + 7, shape, **family, backend="triton")
    projected = nola_project(grad, 2**40 + 7, k, **family, backend="triton")
    assert rel_err(mixed, nola_mix(coeffs, 2**40 + 7, shape, **family, backend="torch")) <= 1e-5
    assert rel_err(projected, nola_project(grad, 2**40 + 7, k, **family, backend="torch")) <= 1e-5


FUSED_CASES = [
    # rank, k, l, in, out, distribution: in/out not multiples of a block or of a Philox call
    (1, 512, 7, 130, 70, "uniform"),
    (3, 7, 512, 100, 36, "rademacher"),
    (16, 1, 7, 200, 129, "uniform"),
    (64, 7, 1, 72, 40, "uniform"),
    (16, 7, 7, 256, 33, "rademacher"),
    # v1.1, uniform16: factor rows of whole calls (A: 8 calls a row, B: 2); A's rows of partial
    # calls with B's of one call, in slices of 128 rows, the last one partial
    (16, 9, 5, 256, 40, "uniform16_philox7"),
    (8, 6, 512, 100, 300, "uniform16_philox7"),
    (8, 5, 9, 256, 24, "rademacher_philox7"),
    # rademacher tiles of whole calls: A's rows one call each; B's slices of 64 rows of rank 4, two
    # calls of 32 rows each, the last slice partial; l over several basis steps, the last partial
    (4, 6, 70, 128, 150, "rademacher"),
]


def _fused_inputs(case, dtype, lead, device):
    rank, k_a, k_b, in_f, out_f, distribution = case
    tensors = dict(
        x=torch.randn(*lead, in_f).to(dtype),
        alpha=torch.randn(k_a),
        beta=torch.randn(k_b),
        a0=torch.randn(rank, in_f) / in_f**0.5,
        b0=torch.randn(out_f, rank),
    )
    kwargs = dict(
        seed_a=2**40 + 11, seed_b=12345, rank=rank, out_features=out_f, scaling=0.75, distribution=distribution
    )
    return {name: t.to(device) for name, t in tensors.items()}, kwargs, torch.randn(*lead, out_f, device=device)


def _forward_backward(fn, tensors, kwargs, grad_out, **extra):
    leaves = {name: t.detach().clone().requires_grad_() for name, t in tensors.items()}
    out = fn(**leaves, **kwargs, **extra)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), {name: t.grad for name, t in leaves.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lead", [(9,), (2, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "r{}-k{}-l{}-{}x{}-{}".format(*c))
def test_fused_product_matches_float64_reference(device, dtype, lead, case):
    tensors, kwargs, grad_out = _fused_inputs(case, dtype, lead, device)
    out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend="triton")
    as_float64 = {name: t.double() for name, t in tensors.items()}
    ref_out, ref_grads = _forward_backward(naive_matmul, as_float64, kwargs, grad_out.double())
    if dtype == torch.float32:
        bound = dict.fromkeys(["out", *grads], 1e-5)
    else:
        # Half precision: at most twice the naive path's error in the same dtype, or one rounding
        # in it (with k or l = 1 a coefficient's gradient is one dot product, whose error is luck).
        naive_out, naive_grads = _forward_backward(naive_matmul, tensors, kwargs, grad_out)
        eps = torch.finfo(dtype).eps
        bound = {name: max(eps, 2 * rel_err(naive_grads[name], ref_grads[name])) for name in grads}
        bound["out"] = max(eps, 2 * rel_err(naive_out, ref_out))
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert rel_err(out, ref_out) <= bound["out"]
    for name, grad in grads.items():
        assert grad.dtype == tensors[name].dtype, name
        assert rel_err(grad, ref_grads[name]) <= bound[name], name


@pytest.mark.parametrize("device", DEVICES)
def test_both_products_are_reachable(monkeypatch, device):
    tensors, kwargs, _ = _fused_inputs((3, 5, 6, 20, 12, "uniform"), torch.float32, (4,), device)
    with lowrank_path("fused"):
        fused = nola_matmul(**tensors, **kwargs, backend="triton")
    monkeypatch.setattr(get_backend("triton"), "lowrank_forward", None)  # would fail if called
    with lowrank_path("composed"):
        composed = nola_matmul(**tensors, **kwargs, backend="triton")
    assert rel_err(fused, composed) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "composed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_torch_backend_on_the_same_gpu(fused, dtype):
    # 2^24 basis entries: auto would run these composed; both products run.
    tensors, kwargs, grad_out = _fused_inputs((16, 512, 512, 1024, 1024, "uniform"), dtype, (2, 64), "cuda")
    with lowrank_path("fused" if fused else "composed"):
        out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend="triton")
    torch_out, torch_grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend="torch")
    bound = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(out, torch_out) <= bound
    for name, grad in grads.items():
        assert rel_err(grad, torch_grads[name]) <= bound, name


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "composed"])
def test_kernels_run_on_their_tensors_device(fused):
    # The current device stays cuda:0 while the tensors live on cuda:1.
    tensors, kwargs, grad_out = _fused_inputs((3, 5, 6, 20, 12, "uniform"), torch.float32, (4,), "cuda:1")
    with lowrank_path("fused" if fused else "composed"):
        out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend="triton")
    torch_out, torch_grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend="torch")
    assert rel_err(out, torch_out) <= 1e-5
    for name, grad in grads.items():
        assert rel_err(grad, torch_grads[name]) <= 1e-5, name


@pytest.fixture
def restore_fp32_precision():
    saved = torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("setting", ["generic", "matmul"])
def test_tf32_set_by_the_fp32_precision_api(restore_fp32_precision, device, setting):
    # Torch raises on reading allow_tf32 once TF32 was set this way.
    if setting == "generic":
        torch.backends.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    tensors, kwargs, _ = _fused_inputs((3, 5, 6, 20, 12, "uniform"), torch.float32, (4,), device)
    assert lowrank._Plan(tensors["x"], 3, 12, "uniform").a_kwargs["PRECISION"] == "tf32"
    fused = nola_matmul(**tensors, **kwargs, backend="triton")
    assert rel_err(fused, nola_matmul(**tensors, **kwargs, backend="torch")) <= 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_repeat_bit_for_bit_and_agree_across_tokens_per_step(monkeypatch, device):
    # Tokens per step follow the token count, so one call's setting never changes: the same call
    # gives the same bits. Another setting changes only the streamed products' row blocks, whose
    # order is the matmul's (NumPy's here), so the gradients agree within float32 rounding.
    tensors, kwargs, _ = _fused_inputs((16, 7, 7, 256, 33, "uniform"), torch.float32, (300,), device)
    x, alpha, beta, a0, b0 = (tensors[name] for name in ("x", "alpha", "beta", "a0", "b0"))
    family = dict(seed_a=kwargs["seed_a"], seed_b=kwargs["seed_b"], rank=16, out_features=33, scaling=0.75)
    _, h = lowrank.forward(x, alpha, beta, a0, b0, **family, distribution="uniform")
    grad = torch.randn(300, 33, device=device)
    grads = []
    for tokens_per_step in (16, 16, 128):
        monkeypatch.setattr(lowrank, "stream_tokens", lambda tokens, step=tokens_per_step: step)
        grads.append(lowrank.backward(grad, x, h, alpha, beta, a0, b0, **family, distribution="uniform"))
    # beta and b come from the sums over tokens alone, a fixed 64 tokens per step in every
    # setting: the same bits. x, alpha and a also pass through grad_h, whose reductions: out (33)
    # for grad_h, then rank (16) for x, or the tokens (300) for a and then the positions (16 x 256)
    # for alpha.
    lengths = {"x": (33, 16), "a": (33, 300), "alpha": (33, 300, 16 * 256)}
    for name, first, again, other in zip(["x", "alpha", "beta", "a", "b"], *grads, strict=True):
        assert torch.equal(first, again), name
        if name in lengths:
            assert rel_err(other, first) <= 2 * rounding_bound(torch.float32, *lengths[name]), name
        else:
            assert torch.equal(other, first), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "composed"])
def test_autocast_gives_both_products_the_same_dtype(device, fused):
    tensors, kwargs, grad_out = _fused_inputs((3, 5, 6, 20, 12, "uniform"), torch.float32, (4,), device)
    with lowrank_path("fused" if fused else "composed"), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend="triton")
        torch_out = nola_matmul(**tensors, **kwargs, backend="torch")
    assert out.dtype == torch_out.dtype == torch.bfloat16
    assert rel_err(out, torch_out) <= 1e-2
    assert all(grad.dtype == torch.float32 for grad in grads.values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("infinite", ["x", "grad"])
# NumPy inside the CPU interpreter warns when the infinities meet in a sum, as they should here.
@pytest.mark.filterwarnings("ignore:invalid value encountered in reduce:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in add:RuntimeWarning")
def test_an_infinite_input_gives_the_torch_backends_infinities(device, infinite):
    # Rank 1: the infinity reaches grad_alpha (x) or grad_beta (grad) as +-inf, not NaN, while
    # the padded rank rows hold 0 * inf.
    tensors, kwargs, grad_out = _fused_inputs((1, 5, 6, 20, 12, "uniform"), torch.float32, (4,), device)
    if infinite == "x":
        tensors["x"][1, 3] = float("inf")
    else:
        grad_out[2, 5] = float("-inf")
    _, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend="triton")
    _, torch_grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend="torch")
    name = "alpha" if infinite == "x" else "beta"
    assert grads[name].isinf().all(), grads[name]
    for name, grad in grads.items():
        assert torch.equal(grad.isnan(), torch_grads[name].isnan()), name
        assert torch.equal(grad.isinf(), torch_grads[name].isinf()), name


@pytest.mark.parametrize("device", DEVICES)
def test_project_sums_several_position_blocks_per_program(monkeypatch, device):
    # A bound of 100 partials: k = 100 leaves one group of all the position blocks.
    monkeypatch.setattr(mix_project, "PROJECT_PARTIAL_ENTRIES", 100)
    assert mix_project.project_grid(40 * 130, 100, "uniform")[1:3] == (1, 6)
    grad = torch.randn(40, 130, device=device)
    projected = nola_project(grad, 2**40 + 7, 100, backend="triton")
    assert rel_err(projected, nola_project(grad, 2**40 + 7, 100, backend="torch")) <= 1e-5


def test_project_partials_stay_bounded():
    # A 4096 x 4096 gradient projected on 65536 bases: per-block partials would take 4 GiB.
    block, groups, blocks_per_group, splits, per_split = mix_project.project_grid(4096 * 4096, 65536, "uniform")
    assert groups * 65536 <= mix_project.PROJECT_PARTIAL_ENTRIES
    assert groups * blocks_per_group * block >= 4096 * 4096 and splits * per_split >= 65536


def test_large_ranks_run_composed(monkeypatch):
    # Padded rank 256 and up outgrow Hopper's shared memory in the backward kernels.
    triton_backend = get_backend("triton")
    monkeypatch.setattr(triton_backend.perf_model, "fused_wins", lambda backend, shape: True)
    assert triton_backend.prefers_fused(LowRankShape(64, 512, 512, 128, 8, 8, torch.float32))
    for rank in (129, 256, 512):
        assert not triton_backend.prefers_fused(LowRankShape(64, 512, 512, rank, 8, 8, torch.float32)), rank


@pytest.mark.parametrize(
    "in_features, out_features, rank, distribution",
    [(1000, 1024, 8, "rademacher"), (1024, 1024, 6, "rademacher"), (1024, 1024, 1, "rademacher_philox7"),
     (1030, 1024, 8, "uniform")],
)  # fmt: skip
def test_tiles_that_are_not_whole_calls_run_composed(monkeypatch, in_features, out_features, rank, distribution):
    # Their entry-wise path makes a Philox call per entry or few, which the model does not price.
    triton_backend = get_backend("triton")
    monkeypatch.setattr(triton_backend.perf_model, "fused_wins", lambda backend, shape: True)
    shape = LowRankShape(256, in_features, out_features, rank, 512, 512, torch.bfloat16, distribution)
    assert not triton_backend.prefers_fused(shape)
    aligned = LowRankShape(256, 1024, 1024, 8, 512, 512, torch.bfloat16, distribution)
    assert triton_backend.prefers_fused(aligned)


@pytest.mark.skipif(not INTERPRETED, reason="Triton's interpreter is off")
def test_auto_never_picks_the_interpreter():
    assert get_backend("triton").emulated("cpu") and get_backend("triton").emulated("cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_basis_index_splits_past_int32(device):
    # Split 2 starts at 2 * (2^31 - 1) > k: no basis of it; in int32 it would wrap to -2.
    coeffs = torch.randn(4, device=device)
    numel, per_split = 128, 2**31 - 1
    partial = torch.full((3, numel), float("nan"), device=device)
    mix_project._mix_kernel[(1, 3)](
        coeffs, partial, numel, 4, per_split, 0.5, 2**40 + 7, 0, 0,
        BLOCK=128, BLOCK_I=BLOCK_I, DISTRIBUTION="uniform",
    )  # fmt: skip
    expected = nola_mix(coeffs, 2**40 + 7, (1, numel), scale=0.5, backend="torch").view(-1)
    assert rel_err(partial[0], expected) <= 1e-6
    assert torch.equal(partial[1:], torch.zeros(2, numel, device=device))
