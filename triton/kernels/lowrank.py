"""The fused low-rank product delta = scaling * (x A^T) B^T, its factors generated in the tile
loops: A = a0 + mix(alpha) (rank x in), B = b0 + mix(beta) (out x rank).

The grid splits `in` (A's side) or `out` (B's side) into slices and every program streams over
all tokens, so each basis entry is generated once per launch. Sums across slices (h, grad_h) and
the coefficient projections are per-program partials reduced afterwards in a fixed order:
deterministic, with no float atomics.

  forward:  A side: A's slice, then h partial = x[:, slice] A[:, slice]^T over the tokens;
            B side: B's slice, then delta[:, slice] = scaling * h B[slice]^T.
  backward: B side: grad_b = scaling * grad^T h over the tokens, then one walk over j that
            generates V_j once for both B and grad_beta, then grad_h partial = scaling * grad B;
            A side: grad_a = grad_h^T x, one walk over i for A and grad_alpha, then grad_x = grad_h A.

Products take their operands in x's dtype (as the composed path's matmuls do) and accumulate in
float32; float32 operands multiply in true float32 unless torch allows TF32. Launches run on the
tensors' CUDA device.
"""

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from nola_kernels.basis import COUNTER_SHIFT

from .launch import FACTOR_BLOCK_I, INTERPRETED, ceil_div, on_device, output_buffer
from .philox_tiles import call_shift, mixed_tile, projection_units

# Tokens per step of the streamed products: a heuristic of the token count, not a tuning, so
# that no launch measures configurations (a call captured by a CUDA graph must not), and warps
# from the generated tile alone, so the projections' reduction order is a function of the layer
# shape. The interpreter uses one small setting.
_STREAM_T_SMALL, _STREAM_T_LARGE, _LARGE_TOKENS = 64, 128, 1024
_INTERPRETED_STREAM_T = 32
_MIN_WARPS = 4
# Tokens per step of the sums over tokens (grad_a, grad_b): fixed, because it sets the order of
# their float32 additions, and gradients must not depend on the streamed products' setting.
_SUM_T: tl.constexpr = tl.constexpr(64)


@triton.jit
def _factor_tile(
    coeffs_ptr, k, scale, seed, offset_ptr, row0, n_rows, col0, n_cols, grad, projection_ptr,
    ROWS: tl.constexpr, WIDTH: tl.constexpr, HAS_OFFSET: tl.constexpr, BLOCK_I: tl.constexpr,
    DISTRIBUTION: tl.constexpr, ALIGNED: tl.constexpr, PROJECT: tl.constexpr,
):  # fmt: skip
    """Rows row0.. (ROWS) and columns col0.. (WIDTH) of a factor offset + mix(coeffs) of shape
    (n_rows, n_cols), basis stream 0; 0 outside the factor. PROJECT: as mixed_tile, projection
    unit u's share of the projection on basis i at projection_ptr + u * k + i."""
    rows = row0 + tl.arange(0, ROWS)
    cols = col0 + tl.arange(0, WIDTH)
    valid = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    row_start = rows.to(tl.int64) * n_cols + col0
    # grad past the factor may hold 0 * x: NaN where x is infinite, which projects as 0.
    tile = mixed_tile(
        coeffs_ptr, 0, k, scale, seed, 0, 0, row_start, valid, tl.where(valid, grad, 0.0),
        projection_ptr + tl.arange(0, projection_units(ROWS, WIDTH, DISTRIBUTION, ALIGNED)).to(tl.int64) * k, WIDTH,
        BLOCK_I, DISTRIBUTION, ALIGNED, PROJECT,
        32 * factor_warps((ROWS * WIDTH) >> call_shift(DISTRIBUTION)),
    )  # fmt: skip
    if HAS_OFFSET:
        positions = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
        tile += tl.load(offset_ptr + positions, mask=valid, other=0.0).to(tl.float32)
    return tile


@triton.jit
def _pad_rows(tile, ROWS: tl.constexpr):
    """tile (R, C), R dividing ROWS, as (ROWS, C) with 0 past row R: products need >= 16 rows, while
    only next_power_of_2(rank) rows of a factor are generated."""
    R: tl.constexpr = tile.shape[0]
    C: tl.constexpr = tile.shape[1]
    repeated = tl.reshape(tl.broadcast_to(tile[None, :, :], (ROWS // R, R, C)), (ROWS, C))
    return tl.where(tl.arange(0, ROWS)[:, None] < R, repeated, 0.0)


@triton.jit
def _first_rows(tile, ROWS: tl.constexpr):
    """The first ROWS rows of tile (R, C), R a multiple of ROWS. The rows past ROWS are dropped,
    not added: they hold 0 * x, NaN where x is infinite."""
    R: tl.constexpr = tile.shape[0]
    C: tl.constexpr = tile.shape[1]
    first = tl.arange(0, R // ROWS)[:, None, None] == 0
    return tl.sum(tl.where(first, tl.reshape(tile, (R // ROWS, ROWS, C)), 0.0), axis=0)


@triton.jit
def _rounded(value, like_ptr, EMULATE_BF16: tl.constexpr):
    """value rounded to like_ptr's dtype. EMULATE_BF16 (Triton's interpreter on bfloat16, whose
    dots misread bfloat16 operands and whose conversion truncates): a bfloat16 value is rounded
    to nearest even by hand and kept in float32."""
    rounded = value.to(like_ptr.dtype.element_ty)
    if EMULATE_BF16:
        if like_ptr.dtype.element_ty == tl.bfloat16:
            value = value.to(tl.float32)
            bits = value.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            # NaN stays NaN: the carry of the rounding could turn some of its bit patterns into inf.
            rounded = tl.where(value == value, bits.to(tl.float32, bitcast=True), value)
    return rounded


@triton.jit
def _load_rows(ptr, tokens, t, cols, n_cols, like_ptr, EMULATE_BF16: tl.constexpr):
    """Rows t, columns cols of a row-major (tokens, n_cols) matrix as product operands in
    like_ptr's dtype; 0 outside the matrix."""
    mask = (t[:, None] < tokens) & (cols[None, :] < n_cols)
    tile = tl.load(ptr + t[:, None].to(tl.int64) * n_cols + cols[None, :], mask=mask, other=0.0)
    return _rounded(tile, like_ptr, EMULATE_BF16)


@triton.jit
def _store_rows(ptr, value, tokens, t, cols, n_cols, EMULATE_BF16: tl.constexpr):
    mask = (t[:, None] < tokens) & (cols[None, :] < n_cols)
    tl.store(ptr + t[:, None].to(tl.int64) * n_cols + cols[None, :], _rounded(value, ptr, EMULATE_BF16), mask=mask)


@triton.jit
def _stream_products(
    src_ptr, src_cols, n_src, factor, dst_ptr, dst_cols, n_dst, tokens, like_ptr,
    BLOCK_T: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """dst[t, dst_cols] = src[t, src_cols] @ factor for every token t, operands in like_ptr's dtype."""
    for t0 in range(0, tokens, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        src = _load_rows(src_ptr, tokens, t, src_cols, n_src, like_ptr, EMULATE_BF16)
        product = tl.dot(src, factor, input_precision=PRECISION)
        _store_rows(dst_ptr, product, tokens, t, dst_cols, n_dst, EMULATE_BF16)


@triton.jit
def _sum_over_tokens(
    left_ptr, left_cols, n_left, right_ptr, right_cols, n_right, tokens, like_ptr,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """sum over tokens t of left[t, left_cols]^T right[t, right_cols], in float32, _SUM_T tokens
    per step."""
    acc = tl.zeros((left_cols.shape[0], right_cols.shape[0]), tl.float32)
    for t0 in range(0, tokens, _SUM_T):
        t = t0 + tl.arange(0, _SUM_T)
        left = _load_rows(left_ptr, tokens, t, left_cols, n_left, like_ptr, EMULATE_BF16)
        right = _load_rows(right_ptr, tokens, t, right_cols, n_right, like_ptr, EMULATE_BF16)
        acc += tl.dot(tl.trans(left), right, input_precision=PRECISION)
    return acc


@triton.jit
def _a_forward(
    x_ptr, alpha_ptr, a0_ptr, h_partial_ptr, tokens, in_features, rank, k, scale, seed,
    HAS_OFFSET: tl.constexpr, RANK_BLOCK: tl.constexpr, SLICE: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_I: tl.constexpr, DISTRIBUTION: tl.constexpr, ALIGNED: tl.constexpr,
    RANK_GEN: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    part = tl.program_id(0)
    cols = part * SLICE + tl.arange(0, SLICE)
    a = _factor_tile(
        alpha_ptr, k, scale, seed, a0_ptr, 0, rank, part * SLICE, in_features, 0.0, alpha_ptr,
        RANK_GEN, SLICE, HAS_OFFSET, BLOCK_I, DISTRIBUTION, ALIGNED, False,
    )  # fmt: skip
    a = _pad_rows(a, RANK_BLOCK)
    h_partial_ptr += part.to(tl.int64) * tokens * rank
    _stream_products(
        x_ptr, cols, in_features, tl.trans(_rounded(a, x_ptr, EMULATE_BF16)), h_partial_ptr,
        tl.arange(0, RANK_BLOCK), rank, tokens, x_ptr, BLOCK_T, PRECISION, EMULATE_BF16,
    )  # fmt: skip


@triton.jit
def _b_forward(
    h_ptr, beta_ptr, b0_ptr, delta_ptr, tokens, out_features, rank, k, scale, seed, scaling,
    HAS_OFFSET: tl.constexpr, RANK_BLOCK: tl.constexpr, SLICE: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_I: tl.constexpr, DISTRIBUTION: tl.constexpr, ALIGNED: tl.constexpr,
    RANK_GEN: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    row0 = tl.program_id(0) * SLICE
    b = _factor_tile(
        beta_ptr, k, scale, seed, b0_ptr, row0, out_features, 0, rank, 0.0, beta_ptr,
        SLICE, RANK_GEN, HAS_OFFSET, BLOCK_I, DISTRIBUTION, ALIGNED, False,
    )  # fmt: skip
    b = tl.trans(_pad_rows(tl.trans(b), RANK_BLOCK))
    _stream_products(
        h_ptr, tl.arange(0, RANK_BLOCK), rank, tl.trans(_rounded(b * scaling, delta_ptr, EMULATE_BF16)),
        delta_ptr, row0 + tl.arange(0, SLICE), out_features, tokens, delta_ptr, BLOCK_T, PRECISION,
        EMULATE_BF16,
    )  # fmt: skip


@triton.jit
def _b_backward(
    grad_ptr, h_ptr, beta_ptr, b0_ptr, grad_b_ptr, beta_partial_ptr, grad_h_partial_ptr,
    tokens, out_features, rank, k, scale, seed, scaling,
    HAS_OFFSET: tl.constexpr, RANK_BLOCK: tl.constexpr, SLICE: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_I: tl.constexpr, DISTRIBUTION: tl.constexpr, ALIGNED: tl.constexpr,
    RANK_GEN: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    part = tl.program_id(0)
    outs = part * SLICE + tl.arange(0, SLICE)
    ranks = tl.arange(0, RANK_BLOCK)
    grad_b = scaling * _sum_over_tokens(
        grad_ptr, outs, out_features, h_ptr, ranks, rank, tokens, grad_ptr, PRECISION, EMULATE_BF16
    )
    _store_rows(grad_b_ptr, grad_b, out_features, outs, ranks, rank, False)
    b = _factor_tile(
        beta_ptr, k, scale, seed, b0_ptr, part * SLICE, out_features, 0, rank,
        tl.trans(_first_rows(tl.trans(grad_b), RANK_GEN)),
        beta_partial_ptr + part.to(tl.int64) * projection_units(SLICE, RANK_GEN, DISTRIBUTION, ALIGNED) * k,
        SLICE, RANK_GEN, HAS_OFFSET, BLOCK_I, DISTRIBUTION, ALIGNED, True,
    )  # fmt: skip
    b = tl.trans(_pad_rows(tl.trans(b), RANK_BLOCK))
    grad_h_partial_ptr += part.to(tl.int64) * tokens * rank
    _stream_products(
        grad_ptr, outs, out_features, _rounded(b * scaling, grad_ptr, EMULATE_BF16), grad_h_partial_ptr,
        ranks, rank, tokens, grad_ptr, BLOCK_T, PRECISION, EMULATE_BF16,
    )  # fmt: skip


@triton.jit
def _a_backward(
    grad_h_ptr, x_ptr, alpha_ptr, a0_ptr, grad_a_ptr, alpha_partial_ptr, grad_x_ptr,
    tokens, in_features, rank, k, scale, seed,
    HAS_OFFSET: tl.constexpr, RANK_BLOCK: tl.constexpr, SLICE: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_I: tl.constexpr, DISTRIBUTION: tl.constexpr, ALIGNED: tl.constexpr,
    RANK_GEN: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    part = tl.program_id(0)
    cols = part * SLICE + tl.arange(0, SLICE)
    ranks = tl.arange(0, RANK_BLOCK)
    grad_a = _sum_over_tokens(
        grad_h_ptr, ranks, rank, x_ptr, cols, in_features, tokens, x_ptr, PRECISION, EMULATE_BF16
    )
    _store_rows(grad_a_ptr, grad_a, rank, ranks, cols, in_features, False)
    a = _factor_tile(
        alpha_ptr, k, scale, seed, a0_ptr, 0, rank, part * SLICE, in_features, _first_rows(grad_a, RANK_GEN),
        alpha_partial_ptr + part.to(tl.int64) * projection_units(RANK_GEN, SLICE, DISTRIBUTION, ALIGNED) * k,
        RANK_GEN, SLICE, HAS_OFFSET, BLOCK_I, DISTRIBUTION, ALIGNED, True,
    )  # fmt: skip
    a = _pad_rows(a, RANK_BLOCK)
    _stream_products(
        grad_h_ptr, ranks, rank, _rounded(a, x_ptr, EMULATE_BF16), grad_x_ptr, cols, in_features,
        tokens, x_ptr, BLOCK_T, PRECISION, EMULATE_BF16,
    )  # fmt: skip


def _tf32_allowed():
    """Whether torch lets float32 matmuls use TF32. Newer torch says so in fp32_precision, whichever
    API set it, and raises on reading allow_tf32 once the new one was used; older torch has only
    allow_tf32."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if precision is None:
        return torch.backends.cuda.matmul.allow_tf32
    return precision == "tf32"


@dataclass(frozen=True)
class FactorTiles:
    """How the fused kernels tile one product's factors: the padded rank, each factor's slice
    width and whether its tiles are whole Philox calls (aligned). A rademacher tile that is not
    aligned takes the entry-wise path, one call per few entries."""

    rank_generated: int  # factor rows (A) or columns (B) generated
    rank_block: int  # tl.dot needs >= 16
    a_slice: int
    a_aligned: bool
    b_slice: int
    b_aligned: bool

    @classmethod
    def of(cls, in_features, out_features, rank, distribution):
        rank_generated = triton.next_power_of_2(rank)
        rank_block = max(16, rank_generated)
        call = 1 << COUNTER_SHIFT[distribution]
        # Tiles are whole Philox calls when a factor row and the tile width are whole calls, or,
        # for rademacher B tiles, when the rows are unpadded, a call holds whole rows and the
        # slice whole calls (a call's rows are then one run); every call then feeds a run of
        # adjacent entries.
        widest = 128 if rank_block <= 32 else 64
        a_slice = min(widest, max(16, triton.next_power_of_2(in_features)))
        a_aligned = in_features % call == 0 and a_slice % call == 0
        b_whole_rows = rank % call == 0 and rank_generated % call == 0
        # A's slice is a (rank_block, a_slice) tile in registers, B's a (b_slice, rank_block) one:
        # 64 rows, or up to A's width where uniform rows of whole calls need them for one Philox
        # call per thread of the fewest warps (uniform16 at rank 8).
        b_rows = max(64, min(widest, _MIN_WARPS * 32 * call // rank_generated)) if b_whole_rows else 64
        b_slice = min(b_rows, max(16, triton.next_power_of_2(out_features)))
        b_runs = call == 128 and rank == rank_generated and call % rank == 0 and b_slice * rank % call == 0
        return cls(rank_generated, rank_block, a_slice, a_aligned, b_slice, b_whole_rows or b_runs)


class _Plan:
    """Launch settings of one product: its FactorTiles, the product precision, tokens per step
    and warps."""

    def __init__(self, x, rank, out_features, distribution):
        in_features = x.shape[1]
        tiles = FactorTiles.of(in_features, out_features, rank, distribution)
        rank_generated, a_aligned, b_aligned = tiles.rank_generated, tiles.a_aligned, tiles.b_aligned
        self.rank_generated, self.rank_block = rank_generated, tiles.rank_block
        self.a_slice, self.b_slice = tiles.a_slice, tiles.b_slice
        call = 1 << COUNTER_SHIFT[distribution]
        rademacher = call == 128
        self.a_parts = ceil_div(in_features, self.a_slice)
        self.b_parts = ceil_div(out_features, self.b_slice)
        # Rows (A) or columns (B) of the projection partials per program.
        self.a_units = projection_units(rank_generated, self.a_slice, distribution, a_aligned)
        self.b_units = projection_units(self.b_slice, rank_generated, distribution, b_aligned)
        allow_tf32 = x.dtype == torch.float32 and _tf32_allowed()
        common = dict(
            RANK_BLOCK=self.rank_block, RANK_GEN=rank_generated, DISTRIBUTION=distribution,
            PRECISION="tf32" if allow_tf32 else "ieee", EMULATE_BF16=INTERPRETED and x.dtype == torch.bfloat16,
        )  # fmt: skip
        common.update(BLOCK_T=stream_tokens(x.shape[0]), num_stages=2 if INTERPRETED else 3)
        self.a_kwargs = _factor_kwargs(common, self.a_slice, rank_generated * self.a_slice // call, a_aligned, rademacher)
        self.b_kwargs = _factor_kwargs(common, self.b_slice, rank_generated * self.b_slice // call, b_aligned, rademacher)


def _factor_kwargs(common, slice_width, tile_calls, aligned, rademacher):
    """One side's launch settings: warps for one Philox call per thread per basis index where the
    tile has that many calls. An aligned rademacher tile's walk takes as many basis indices per
    step as give each thread one call, at least the 2 its projection splits a call between
    (FACTOR_BLOCK_I in the interpreter)."""
    warps = factor_warps(tile_calls)
    block_i = FACTOR_BLOCK_I
    if aligned and rademacher and not INTERPRETED:
        block_i = max(2, 32 * warps // tile_calls)
    return dict(common, SLICE=slice_width, ALIGNED=aligned, BLOCK_I=block_i, num_warps=warps)


def stream_tokens(tokens):
    """Tokens per step of the streamed products of a call with `tokens` tokens."""
    if INTERPRETED:
        return _INTERPRETED_STREAM_T
    return _STREAM_T_LARGE if tokens >= _LARGE_TOKENS else _STREAM_T_SMALL


@triton.constexpr_function
def factor_warps(tile_calls):
    """Warps of a program whose factor tile takes `tile_calls` Philox calls per basis index: 4
    (tl.dot's warp group on Hopper) to 8, one call per thread where the tile has that many."""
    return _MIN_WARPS if INTERPRETED else min(8, max(_MIN_WARPS, tile_calls // 32))


def _offset(offset, fallback):
    """An offset's kernel arguments: (pointer, HAS_OFFSET); a dummy pointer when absent."""
    return (fallback, False) if offset is None else (offset.contiguous(), True)


def forward(x, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution):
    """(delta, h) for x (tokens, in) in float16/bfloat16/float32; see nola_kernels.ops."""
    x, alpha, beta = x.contiguous(), alpha.contiguous(), beta.contiguous()
    tokens, in_features = x.shape
    k_a, k_b = alpha.numel(), beta.numel()
    plan = _Plan(x, rank, out_features, distribution)
    a0, has_a0 = _offset(a0, alpha)
    b0, has_b0 = _offset(b0, beta)
    h_partial = output_buffer((plan.a_parts, tokens, rank), torch.float32, x.device)
    with on_device(x):
        _a_forward[(plan.a_parts,)](
            x, alpha, a0, h_partial, tokens, in_features, rank, k_a, 1 / math.sqrt(k_a), seed_a,
            HAS_OFFSET=has_a0, **plan.a_kwargs,
        )  # fmt: skip
        h = h_partial.sum(0)
        delta = output_buffer((tokens, out_features), x.dtype, x.device)
        _b_forward[(plan.b_parts,)](
            h, beta, b0, delta, tokens, out_features, rank, k_b, 1 / math.sqrt(k_b), seed_b, scaling,
            HAS_OFFSET=has_b0, **plan.b_kwargs,
        )  # fmt: skip
    return delta, h


def backward(grad, x, h, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution):
    """(grad_x, grad_alpha, grad_beta, grad_a, grad_b); see nola_kernels.ops."""
    x, h, alpha, beta = x.contiguous(), h.contiguous(), alpha.contiguous(), beta.contiguous()
    tokens, in_features = x.shape
    k_a, k_b = alpha.numel(), beta.numel()
    plan = _Plan(x, rank, out_features, distribution)
    a0, has_a0 = _offset(a0, alpha)
    b0, has_b0 = _offset(b0, beta)
    grad = grad.to(x.dtype).contiguous()
    grad_b = output_buffer((out_features, rank), torch.float32, x.device)
    beta_partial = output_buffer((plan.b_parts * plan.b_units, k_b), torch.float32, x.device)
    grad_h_partial = output_buffer((plan.b_parts, tokens, rank), torch.float32, x.device)
    scale_b = 1 / math.sqrt(k_b)
    with on_device(x):
        _b_backward[(plan.b_parts,)](
            grad, h, beta, b0, grad_b, beta_partial, grad_h_partial, tokens, out_features, rank, k_b,
            scale_b, seed_b, scaling, HAS_OFFSET=has_b0, **plan.b_kwargs,
        )  # fmt: skip
        grad_h = grad_h_partial.sum(0)
        grad_a = output_buffer((rank, in_features), torch.float32, x.device)
        alpha_partial = output_buffer((plan.a_parts * plan.a_units, k_a), torch.float32, x.device)
        grad_x = output_buffer((tokens, in_features), x.dtype, x.device)
        scale_a = 1 / math.sqrt(k_a)
        _a_backward[(plan.a_parts,)](
            grad_h, x, alpha, a0, grad_a, alpha_partial, grad_x, tokens, in_features, rank, k_a,
            scale_a, seed_a, HAS_OFFSET=has_a0, **plan.a_kwargs,
        )  # fmt: skip
    return grad_x, alpha_partial.sum(0).mul_(scale_a), beta_partial.sum(0).mul_(scale_b), grad_a, grad_b
