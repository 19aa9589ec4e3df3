"""Compiles every Triton kernel of the backend for Hopper (sm_90) in a spread of specializations,
without a GPU: Triton's compiler runs on the CPU down to PTX and its bundled ptxas. Run by
tests/test_triton_compile.py in a process without TRITON_INTERPRET; prints one line per kernel."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from sass.hopper import ACTIVATIONS, compile_triton

from nola_kernels.backends.triton_backend import FUSED_MAX_RANK
from nola_kernels.basis import DISTRIBUTIONS
from nola_kernels.official_rng import official_distribution
from nola_kernels.triton_kernels import grouped, lowrank, mix_project
from nola_kernels.triton_kernels.launch import MIX_WARPS, PROJECT_WARPS, flat_block


def compile_kernel(kernel, activation, constexprs, num_warps=4, num_stages=3):
    compiled = compile_triton(kernel, activation, constexprs, num_warps, num_stages)
    print(compiled.metadata.name, activation, sorted(constexprs.items()), f"{compiled.metadata.shared} bytes shared")


def main():
    for distribution in DISTRIBUTIONS:
        for kernel, warps in ((mix_project._mix_kernel, MIX_WARPS), (mix_project._project_kernel, PROJECT_WARPS)):
            flat = dict(BLOCK=flat_block(1, distribution, warps), BLOCK_I=1, DISTRIBUTION=distribution)
            compile_kernel(kernel, "fp32", flat, num_warps=warps)
    for dtype, legacy in (("float32", False), ("bfloat16", True), ("float16", False)):
        for kernel, warps in ((mix_project._official_mix_kernel, MIX_WARPS), (mix_project._official_project_kernel, PROJECT_WARPS)):
            official = dict(BLOCK=mix_project.OFFICIAL_ENTRIES_PER_THREAD * 32 * warps, BLOCK_I=1, DTYPE=dtype, LEGACY=legacy)
            compile_kernel(kernel, "fp32", official, num_warps=warps)
        # The grouped kernels take the official family's name (float32's four products, the
        # halves' exact three), at their largest row block.
        name = official_distribution("H200", getattr(torch, dtype), "legacy" if legacy else "current")
        for kernel, tiles in ((grouped._mix_kernel, grouped.MIX_TILE), (grouped._project_kernel, grouped.PROJECT_TILE)):
            block_i, width = tiles[grouped.tile_distribution(name)]
            constexprs = dict(ROWS=grouped.MAX_ROWS, BLOCK_I=block_i, WIDTH=width, DISTRIBUTION=name)
            compile_kernel(kernel, "fp32", constexprs, grouped.GROUPED_WARPS, grouped.GROUPED_STAGES)
    # Layer shapes as the launches see them: GPT-2 M and LLaMA-2-7B layouts, unaligned rank-3 and
    # rank-64 layouts, rademacher with whole and partial Philox calls, uniform16 at GPT-2 M (the
    # B side's 128-row slice) and unaligned; then the largest rank the fused path takes in float32
    # (the widest tiles) with the most tokens per step, the setting that needs the most shared
    # memory.
    most_tokens = lowrank._LARGE_TOKENS
    layers = [
        (1024, 1024, 8, "uniform", torch.float32, 512),
        (4096, 4096, 16, "uniform", torch.bfloat16, 4096),
        (130, 70, 3, "uniform", torch.float16, 64),
        (72, 40, 64, "uniform", torch.bfloat16, 64),
        (4096, 4096, 16, "rademacher", torch.bfloat16, 64),
        (100, 36, 8, "rademacher", torch.float32, 64),
        (1024, 1024, 8, "uniform16_philox7", torch.float32, 512),
        (100, 36, 3, "uniform16_philox7", torch.float16, 64),
        (4096, 4096, FUSED_MAX_RANK, "uniform", torch.float32, most_tokens),
    ]
    for in_features, out_features, rank, distribution, dtype, tokens in layers:
        x = torch.empty(tokens, in_features, dtype=dtype, device="meta")
        plan = lowrank._Plan(x, rank, out_features, distribution)
        for kernel, kwargs in (
            (lowrank._a_forward, plan.a_kwargs), (lowrank._a_backward, plan.a_kwargs),
            (lowrank._b_forward, plan.b_kwargs), (lowrank._b_backward, plan.b_kwargs),
        ):  # fmt: skip
            constexprs = {name: value for name, value in kwargs.items() if name not in ("num_warps", "num_stages")}
            compile_kernel(kernel, ACTIVATIONS[dtype], {**constexprs, "HAS_OFFSET": True}, kwargs["num_warps"], kwargs["num_stages"])


if __name__ == "__main__":
    main()
