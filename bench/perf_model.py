"""Prints the performance model's tables (nola_kernels/perf_model.py): predicted microseconds of
every nola_matmul path at the GPU benchmark shapes, and the ratios NOLA layer / LoRA layer and
NOLA delta / official, after (the loop counts `make perf-static` measured, prefers_fused as the
model says, the add inside the last GEMM) and before (the code at 498619d: the review's loop
counts, main's routing, a separate add); last, LLaMA-2-7B's step with shared bases, grouped
generation against LoRA and the per-layer paths. A model, not a measurement.

    .venv/bin/python bench/perf_model.py [--gpu h200] [--steps SHAPE PATH]
"""

import argparse
import dataclasses
import sys

from workloads import SHAPES

from nola_kernels import perf_model as model
from nola_kernels.basis import DISTRIBUTIONS, V1_DISTRIBUTIONS
from nola_kernels.lowrank import LowRankShape

GPUS = {"h100": model.H100, "h200": model.H200}
BENCH_SHAPES = ("gpt2-medium", "llama2-7b-q")
# main's routing before the model (commit 498619d): cuda_backend.prefers_fused picked the fused
# path at both shapes (its products <= generation estimate), triton_backend's 4M-entry limit the
# composed one.
BEFORE_DEFAULT = {"cuda": "cuda-fused", "triton": "triton-composed"}
TARGETS = {"layer_fwd_bwd_over_lora": 1.15, "delta_fwd_bwd_over_official": 0.3}  # at llama2-7b-q
GROUPED_STEP_OVER_LORA = 1.05  # LLaMA-2-7B, all linears, shared bases, grouped generation


def _review(sass, calls):
    return model.LoopCount(sass, calls, "review (sm_90 SASS of main at 498619d)")


def _assumed(sass, calls, why):
    return model.LoopCount(sass, calls, f"assumed: {why}")


# The loops of the code at 498619d, by the outside review: what the "before" rows are priced with.
REVIEW_COUNTS = {
    ("mix", "cuda", "uniform"): _review(14.75, 1 / 4),
    ("mix+project", "cuda", "uniform"): _review(19.6, 1 / 4),
    ("project", "cuda", "uniform"): _review(14.3, 1 / 4),
    ("mix", "cuda", "rademacher"): _review(5.4, 1 / 32),
    ("project", "cuda", "rademacher"): _assumed(5.4, 1 / 32, "as the rademacher mix"),
    ("mix+project", "cuda", "rademacher"): _assumed(7.2, 1 / 32, "the rademacher mix x 19.6 / 14.75"),
    ("mix", "triton", "uniform"): _review(22.9, 1 / 4),
    ("project", "triton", "uniform"): _review(34.8, 1 / 4),
    ("mix", "triton", "rademacher"): _review(55.6, 1.0),
    ("project", "triton", "rademacher"): _assumed(55.6, 1.0, "as the rademacher mix"),
    ("fused A forward", "triton", "uniform"): _review(21.3, 1 / 4),
    ("fused B forward", "triton", "uniform"): _assumed(21.3, 1 / 4, "as fused A forward"),
    ("fused A backward", "triton", "uniform"): _review(40.0, 1 / 4),
    ("fused B backward", "triton", "uniform"): _review(35.0, 1 / 4),
    **{
        (kernel, "triton", "rademacher"): _assumed(55.6, 1.0, "as the rademacher mix")
        for kernel in model.TRITON_FUSED_KERNELS
    },
}


def shape_of(name, distribution="uniform"):
    shape = next(s for s in SHAPES["cuda"] if s.name == name)
    return LowRankShape(
        shape.tokens, shape.in_features, shape.out_features, shape.rank, shape.k, shape.k, shape.dtype, distribution
    )


def rows_for(shape, gpu, counts):
    """(label, path, fold) -> the four predicted times in us and the four ratios."""

    def us(path, layer, backward, fold):
        return 1e6 * model.predict_s(path, shape, layer=layer, backward=backward, fold=fold, gpu=gpu, counts=counts)

    lora = {b: us("lora", True, b, False) for b in (False, True)}
    official = {b: us("official", False, b, False) for b in (False, True)}
    variants = [("lora", "lora", False), ("official", "official", False)]
    for path in ("cuda-fused", "cuda-composed", "triton-fused", "triton-composed"):
        if path in model.FOLDS_ADD:
            variants += [(f"{path} (separate add)", path, False), (f"{path} (add in GEMM)", path, True)]
        else:
            variants.append((path, path, False))
    table = {}
    for label, path, fold in variants:
        times = [us(path, layer, b, fold) for layer in (False, True) for b in (False, True)]
        ratios = [times[2] / lora[False], times[3] / lora[True], times[0] / official[False], times[1] / official[True]]
        table[label] = (path, fold, times, ratios)
    return table


def after_default(backend, shape):
    """The path the routing picks now for a NOLA layer (NOLALinear: nola_matmul with add_to)."""
    fused = model.fused_wins(backend, dataclasses.replace(shape, adds=True))
    return f"{backend}-fused" if fused else f"{backend}-composed (add in GEMM)"


def before_default(backend):
    path = BEFORE_DEFAULT[backend]
    return path if path.endswith("fused") else f"{path} (separate add)"


def _cells(label, times, ratios):
    cells = [f"{t:.1f}" for t in times] + [f"{q:.2f}x" for q in ratios]
    if label in ("lora", "official"):
        cells[4:] = ["1.00x" if label == "lora" else "-"] * 2 + ["1.00x" if label == "official" else "-"] * 2
    return " | ".join(cells)


def format_shape(name, shape, gpu):
    """The shape's table: every path priced with the measured loop counts (marked where the routing
    picks it now), then the paths picked before, priced with the review's counts (v1's
    distributions: the review predates v1.1)."""
    table = rows_for(shape, gpu, model.LOOP_COUNTS)
    dtype = str(shape.dtype).removeprefix("torch.")
    lines = [
        f"### {name}: {shape.tokens} tokens, {shape.in_features} x {shape.out_features}, rank {shape.rank}, "
        f"k = l = {shape.k}, {dtype}, {shape.distribution} ({gpu.name}, model)",
        "",
        "| path | delta fwd us | delta fwd+bwd us | layer fwd us | layer fwd+bwd us "
        "| layer / LoRA fwd | layer / LoRA fwd+bwd | delta / official fwd | delta / official fwd+bwd | default |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    defaults = {}
    for backend in ("cuda", "triton"):
        defaults.setdefault(after_default(backend, shape), []).append(f"after ({backend})")
    for label, (_, _, times, ratios) in table.items():
        lines.append(f"| {label} | {_cells(label, times, ratios)} | {', '.join(defaults.get(label, []))} |")
    if shape.distribution not in V1_DISTRIBUTIONS:
        return lines, table
    before = rows_for(shape, gpu, REVIEW_COUNTS)
    for backend in ("cuda", "triton"):
        label = before_default(backend)
        _, _, times, ratios = before[label]
        lines.append(f"| {label}, review's counts | {_cells(label, times, ratios)} | before ({backend}) |")
    return lines, table


def targets_met(table, label):
    _, _, _, ratios = table[label]
    return ratios[1] <= TARGETS["layer_fwd_bwd_over_lora"] and ratios[3] <= TARGETS["delta_fwd_bwd_over_official"]


def report(gpu):
    lines = [
        f"Performance model (not a measurement): {gpu.name}; the figures and assumptions are in "
        "nola_kernels/perf_model.py. LoRA is PEFT's layer (its add separate); x takes a gradient.",
        "",
    ]
    for title, counts in (("Loop counts", model.LOOP_COUNTS), ("Before rows' loop counts", REVIEW_COUNTS)):
        lines += [f"{title} from: {'; '.join(sorted({count.source for count in counts.values()}))}", ""]
    for name in BENCH_SHAPES:
        for distribution in DISTRIBUTIONS:
            shape = shape_of(name, distribution)
            shape_lines, table = format_shape(name, shape, gpu)
            lines += [*shape_lines, ""]
            if name == "llama2-7b-q" and distribution == "uniform":
                label = after_default("cuda", shape)
                verdict = "met" if targets_met(table, label) else "NOT met"
                lines += [
                    f"Targets at {name} (layer fwd+bwd <= {TARGETS['layer_fwd_bwd_over_lora']}x LoRA, delta "
                    f"fwd+bwd <= {TARGETS['delta_fwd_bwd_over_official']}x official) by the default "
                    f"path after ({label}): {verdict}.",
                    "",
                ]
    return lines + format_model_step(llama2_7b(), gpu, model.LOOP_COUNTS)


def llama2_7b(distribution="uniform"):
    """LLaMA-2-7B's adapted linears (q, k, v, o, gate, up, down of 32 blocks) at the llama2-7b-q
    case's settings: 4096 tokens, rank 16, k = l = 512, bfloat16."""
    q = shape_of("llama2-7b-q", distribution)
    sizes = [(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)]
    linears = tuple(LowRankShape(q.tokens, i, o, q.rank, q.k, q.l, q.dtype, distribution) for i, o in sizes)
    return model.ModelSpec("llama2-7b all linears", 32, linears)


def model_step_ratios(spec, gpu, counts):
    """{path: (step ms, step / LoRA step)} of model.MODEL_PATHS."""
    times = {path: 1e3 * model.model_step_s(spec, path, gpu=gpu, counts=counts) for path in model.MODEL_PATHS}
    return {path: (ms, ms / times["lora"]) for path, ms in times.items()}


def format_model_step(spec, gpu, counts):
    shape = spec.linears[0]
    ratios = model_step_ratios(spec, gpu, counts)
    lines = [
        f"### {spec.name}, shared bases: {spec.blocks} blocks x {len(spec.linears)} linears, {shape.tokens} tokens, "
        f"rank {shape.rank}, k = l = {shape.k}, {str(shape.dtype).removeprefix('torch.')}, {shape.distribution} "
        f"({gpu.name}, model)",
        "",
        f"{len(spec.families())} families; the adapted linears' forward + backward (base GEMMs and adapters).",
        "",
        "| path | step ms | step / LoRA step |",
        "|---|---:|---:|",
        *(f"| {path} | {ms:.1f} | {ratio:.3f}x |" for path, (ms, ratio) in ratios.items()),
        "",
    ]
    verdict = "met" if ratios["nola-grouped"][1] <= GROUPED_STEP_OVER_LORA else "NOT met"
    lines.append(f"Target (nola-grouped step <= {GROUPED_STEP_OVER_LORA}x a LoRA step): {verdict}.")
    return lines


def format_steps(shape, path, gpu, counts):
    lines = []
    for backward in (False, True):
        for step in model.pass_steps(path, shape, layer=True, backward=backward, gpu=gpu, counts=counts):
            lines.append(f"{'backward' if backward else 'forward'}: {step.name}: {1e6 * step.gpu_s:.2f} us ({step.host})")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--steps", nargs=2, metavar=("SHAPE", "PATH"), help="print one path's kernels")
    args = parser.parse_args(argv)
    gpu = GPUS[args.gpu]
    if args.steps:
        lines = format_steps(shape_of(args.steps[0]), args.steps[1], gpu, model.LOOP_COUNTS)
    else:
        lines = report(gpu)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
