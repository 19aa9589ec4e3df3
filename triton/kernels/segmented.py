"""The segmented low-rank product: each token of a batch through its own adapter's factors, as
punica's SGMV and vLLM's lora_shrink / lora_expand do, in two launches.

Tokens are sorted by adapter once per batch (`Segments`: the sorted token indices, each
adapter's first position and count); a program takes one block of one adapter's tokens, so it
reads that adapter's factor tile once for the whole block.

  shrink: h[t] = x[t] A[s]^T for each token t of segment s (h float32, (tokens, rank));
  expand: out[t] = add_to[t] + h[t] B[s]^T (B already scaled), tokens of no segment copied.

A (adapters, rank, in) and B (adapters, out, rank) are stacked factors in x's dtype, ranks padded
with zero rows / columns to one rank. Products take operands in x's dtype (h rounded to it, as
torch's matmul does) and accumulate in float32; float32 multiplies in true float32 unless torch
allows TF32, as in the fused kernels.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .launch import INTERPRETED, ceil_div, on_device
from .lowrank import _tf32_allowed

# Token rows and feature columns per program; tl.dot needs every side >= 16.
_BLOCK_M = 16 if INTERPRETED else 32
_BLOCK_K = 64 if INTERPRETED else 128
_BLOCK_N = 64 if INTERPRETED else 128


@dataclass(frozen=True)
class Segments:
    """The tokens of a batch grouped by adapter: `tokens` the token indices sorted by adapter
    (tokens of no adapter left out), `starts` and `counts` (adapters,) each adapter's run in it."""

    tokens: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def of(cls, slots, adapters):
        """Segments of per-token adapter indices `slots` (-1: no adapter) over `adapters` adapters."""
        order = torch.argsort(slots, stable=True)
        counts = torch.bincount(slots + 1, minlength=adapters + 1)
        starts = torch.cumsum(counts, 0) - counts
        return cls(order.to(torch.int32), starts[1:].to(torch.int32), counts[1:].to(torch.int32))


def _block(size):
    return max(16, triton.next_power_of_2(size))


@triton.jit
def _block_tokens(tokens_ptr, starts_ptr, segment, first, count, BLOCK_M: tl.constexpr):
    """Token indices first.. (BLOCK_M) of a segment's run, and which of them lie in it."""
    positions = first + tl.arange(0, BLOCK_M)
    in_segment = positions < count
    tokens = tl.load(tokens_ptr + tl.load(starts_ptr + segment) + positions, mask=in_segment, other=0)
    return tokens.to(tl.int64), in_segment


@triton.jit
def _shrink(
    x_ptr, a_ptr, h_ptr, tokens_ptr, starts_ptr, counts_ptr, in_features, rank,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    segment = tl.program_id(1)
    count = tl.load(counts_ptr + segment)
    first = tl.program_id(0) * BLOCK_M
    if first < count:
        tokens, in_segment = _block_tokens(tokens_ptr, starts_ptr, segment, first, count, BLOCK_M)
        ranks = tl.arange(0, BLOCK_R)
        a_rows = a_ptr + segment.to(tl.int64) * rank * in_features + ranks[:, None] * in_features
        acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
        for k0 in range(0, in_features, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + tokens[:, None] * in_features + cols[None, :],
                mask=in_segment[:, None] & (cols[None, :] < in_features), other=0.0,
            )  # fmt: skip
            a = tl.load(
                a_rows + cols[None, :],
                mask=(ranks[:, None] < rank) & (cols[None, :] < in_features),
                other=0.0,
            )
            acc = tl.dot(x, tl.trans(a), acc, input_precision=PRECISION)
        h = acc.to(x_ptr.dtype.element_ty)
        mask = in_segment[:, None] & (ranks[None, :] < rank)
        tl.store(h_ptr + tokens[:, None] * rank + ranks[None, :], h.to(tl.float32), mask=mask)


@triton.jit
def _expand(
    h_ptr, b_ptr, out_ptr, tokens_ptr, starts_ptr, counts_ptr, out_features, rank,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    segment = tl.program_id(2)
    count = tl.load(counts_ptr + segment)
    first = tl.program_id(0) * BLOCK_M
    if first < count:
        tokens, in_segment = _block_tokens(tokens_ptr, starts_ptr, segment, first, count, BLOCK_M)
        ranks = tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        h = tl.load(
            h_ptr + tokens[:, None] * rank + ranks[None, :],
            mask=in_segment[:, None] & (ranks[None, :] < rank),
            other=0.0,
        )
        b = tl.load(
            b_ptr + segment.to(tl.int64) * out_features * rank + cols[None, :] * rank + ranks[:, None],
            mask=(ranks[:, None] < rank) & (cols[None, :] < out_features), other=0.0,
        )  # fmt: skip
        delta = tl.dot(h.to(b.dtype), b, input_precision=PRECISION)
        mask = in_segment[:, None] & (cols[None, :] < out_features)
        where = out_ptr + tokens[:, None] * out_features + cols[None, :]
        total = tl.load(where, mask=mask, other=0.0).to(tl.float32) + delta
        tl.store(where, total.to(out_ptr.dtype.element_ty), mask=mask)


def segmented_delta(x, a, b, segments, add_to):
    """add_to + each token's (x[t] A[s]^T) B[s]^T: x (tokens, in), a (adapters, rank, in),
    b (adapters, out, rank) in x's dtype, add_to (tokens, out); returns a new (tokens, out)
    tensor in add_to's dtype."""
    tokens, in_features = x.shape
    adapters, rank, _ = a.shape
    out_features = b.shape[1]
    out = add_to.contiguous().clone()
    if adapters == 0 or tokens == 0:
        return out
    x, a, b = x.contiguous(), a.contiguous(), b.contiguous()
    h = torch.empty((tokens, rank), dtype=torch.float32, device=x.device)
    block_r = _block(rank)
    blocks_m = ceil_div(tokens, _BLOCK_M)
    index = (segments.tokens, segments.starts, segments.counts)
    precision = "tf32" if x.dtype == torch.float32 and x.is_cuda and _tf32_allowed() else "ieee"
    with on_device(x):
        _shrink[(blocks_m, adapters)](
            x, a, h, *index, in_features, rank, _BLOCK_M, block_r, _BLOCK_K, precision
        )
        grid = (blocks_m, ceil_div(out_features, _BLOCK_N), adapters)
        _expand[grid](h, b, out, *index, out_features, rank, _BLOCK_M, block_r, _BLOCK_N, precision)
    return out
