"""Compiles every Triton kernel of the backend for Hopper (sm_90) in a spread of specializations,
without a GPU: Triton's compiler runs on the CPU down to PTX and its bundled ptxas. Run by
tests/test_triton_compile.py in a process without TRITON_INTERPRET; prints one line per kernel."""

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from nola_kernels.backends.triton_backend import FUSED_MAX_RANK
from nola_kernels.triton_kernels import lowrank, mix_project

HOPPER = GPUTarget("cuda", 90, 32)
HOPPER_SHARED_BYTES = 232448  # shared memory one block may use on an H100/H200 (227 KiB)
# Pointers in the activations' dtype; every other pointer is float32.
ACTIVATION_POINTERS = {"x_ptr", "delta_ptr", "grad_ptr", "grad_x_ptr"}
FLOAT_SCALARS = {"scale", "scaling"}
ACTIVATIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _signature(fn, activation, constexprs):
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = f"*{activation if name in ACTIVATION_POINTERS else 'fp32'}"
        else:
            types[name] = "fp32" if name in FLOAT_SCALARS else "i64" if name == "seed" else "i32"
    return types


def compile_kernel(kernel, activation, constexprs, num_warps=4):
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    source = ASTSource(
        fn=fn,
        signature=_signature(fn, activation, constexprs),
        constexprs={(fn.arg_names.index(name),): value for name, value in constexprs.items()},
    )
    compiled = triton.compile(source, target=HOPPER, options={"num_warps": num_warps, "num_stages": 3})
    shared = compiled.metadata.shared
    assert shared <= HOPPER_SHARED_BYTES, f"{fn.__name__} needs {shared} bytes of shared memory"
    print(fn.__name__, activation, sorted(constexprs.items()), f"{shared} bytes shared")


def main():
    for rademacher in (False, True):
        flat = dict(BLOCK=1024, BLOCK_I=1, RADEMACHER=rademacher, ROUNDS=10)
        compile_kernel(mix_project._mix_kernel, "fp32", flat)
        compile_kernel(mix_project._project_kernel, "fp32", flat)
    # Layer shapes as the launches see them: GPT-2 M and LLaMA-2-7B layouts, unaligned rank-3 and
    # rank-64 layouts, rademacher with whole and partial Philox calls; then the largest rank the
    # fused path takes in float32 (the widest tiles) with the most tokens per step the tuning
    # tries, the setting that needs the most shared memory.
    most_tokens = max(config.kwargs["BLOCK_T"] for config in lowrank._CONFIGS)
    layers = [
        (1024, 1024, 8, "uniform", torch.float32, 64),
        (4096, 4096, 16, "uniform", torch.bfloat16, 64),
        (130, 70, 3, "uniform", torch.float16, 64),
        (72, 40, 64, "uniform", torch.bfloat16, 64),
        (4096, 4096, 16, "rademacher", torch.bfloat16, 64),
        (100, 36, 8, "rademacher", torch.float32, 64),
        (4096, 4096, FUSED_MAX_RANK, "uniform", torch.float32, most_tokens),
    ]
    for in_features, out_features, rank, distribution, dtype, tokens_per_step in layers:
        x = torch.empty(64, in_features, dtype=dtype, device="meta")
        plan = lowrank._Plan(x, rank, out_features, distribution, rounds=10)
        activation = ACTIVATIONS[dtype]
        common = dict(HAS_OFFSET=True, BLOCK_T=tokens_per_step)
        for kernel in (lowrank._a_forward, lowrank._a_backward):
            compile_kernel(kernel, activation, {**common, **plan.a_kwargs}, num_warps=8)
        for kernel in (lowrank._b_forward, lowrank._b_backward):
            compile_kernel(kernel, activation, {**common, **plan.b_kwargs}, num_warps=8)


if __name__ == "__main__":
    main()
