"""Every nola_matmul path measured beside the performance model's prediction for it: each CUDA
backend forced fused and composed (mix kernels, then cuBLAS), LoRA (cuBLAS alone) and the
official code's way, both distributions, at the GPU benchmark shapes; the delta's forward, its
forward + backward, and a whole layer's forward + backward (x takes a gradient in both). On a GPU
with the CUDA extension, also the grouped mix and projection of G factors against G per-factor calls. Medians
of CUDA-event timings after warm-up. Prints measured / model per case and, per backend, which
path the measurement picks against what prefers_fused (the model) picks; writes the rows as JSON.

    python bench/device_paths.py --out DIR            # on a GPU (bench/device_check.sh runs it)
    python bench/device_paths.py --smoke --out DIR    # a tiny shape on the CPU: checks the script
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from perf_model import BENCH_SHAPES, shape_of
from workloads import SHAPES, Shape, Workload
from workloads import implementations as all_implementations

from nola_kernels import available_backends
from nola_kernels import perf_model as model

# Benchmark pass -> the model's (layer, backward); x takes a gradient in every backward.
PASSES = {"forward": (False, False), "forward_backward": (False, True), "layer": (True, True)}
SMOKE_SHAPE = Shape("smoke", 40, 24, rank=3, k=6, tokens=10)


# v1's two, then v1.1's uniform16 (last, so that a run cut short by its time limit keeps v1's).
MEASURED_DISTRIBUTIONS = ("uniform", "rademacher", "uniform16_philox7")

def model_path(implementation):
    """nola-cuda-fused -> cuda-fused; lora and official as they are; None for the others."""
    if implementation in ("lora", "official"):
        return implementation
    name = implementation.removeprefix("nola-")
    return name if name in model.PATHS else None


def time_case(workload, device, warmup, reps):
    """Median seconds of workload.run, each call after its untimed prepare()."""
    times = []
    for rep in range(warmup + reps):
        args, _ = workload.prepare()
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            workload.run(*args)
            end.record()
            torch.cuda.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            began = time.perf_counter()
            workload.run(*args)
            elapsed = time.perf_counter() - began
        if rep >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def run(device, shapes, warmup, reps):
    rows = []
    # The model prices GPU paths only; on the CPU every nola backend is timed beside the baselines.
    implementations = [
        name
        for name in all_implementations(device)
        if model_path(name) or (device == "cpu" and name.startswith("nola-"))
    ]
    for shape in shapes:
        for distribution in MEASURED_DISTRIBUTIONS:
            for pass_name, (layer, backward) in PASSES.items():
                for implementation in implementations:
                    if implementation == "official" and distribution != "uniform":
                        continue  # the official code draws uniform bases only
                    workload = Workload(implementation, pass_name, shape, device, distribution=distribution)
                    if pass_name == "forward_backward":
                        workload.x.requires_grad_()
                    measured = time_case(workload, device, warmup, reps)
                    row = dict(shape=shape.name, distribution=distribution, pass_name=pass_name,
                               implementation=implementation, measured_us=measured * 1e6)  # fmt: skip
                    path = model_path(implementation)
                    if path is not None and device == "cuda":
                        predicted = model.predict_s(
                            path, model_shape(shape.name, distribution), layer=layer, backward=backward
                        )
                        row.update(model_us=predicted * 1e6, measured_over_model=measured / predicted)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def choices(rows):
    """Per (shape, distribution, backend): the faster path measured for the layer, against the
    model's choice (prefers_fused)."""
    lines = []
    timed = {(r["shape"], r["distribution"], r["pass_name"], r["implementation"]): r for r in rows}
    for (shape, distribution, pass_name, implementation), row in timed.items():
        if pass_name != "layer" or not implementation.endswith("-fused"):
            continue
        backend = implementation.removeprefix("nola-").removesuffix("-fused")
        composed = timed.get((shape, distribution, pass_name, f"nola-{backend}-composed"))
        if composed is None:
            continue
        measured = "fused" if row["measured_us"] < composed["measured_us"] else "composed"
        modelled = "fused" if model.fused_wins(backend, model_shape(shape, distribution)) else "composed"
        lines.append(
            f"{shape} {distribution} {backend}: fused / composed measured "
            f"{row['measured_us'] / composed['measured_us']:.2f}x -> {measured}; the model picks {modelled}"
        )
    return lines


# Grouped generation on the CUDA backend: one grouped op over G factors of a family against G
# per-factor calls (name, factor rows, cols, k, G).
GROUPED_CASES = [("gpt2-medium A", 8, 1024, 512, 12), ("gpt2-medium A", 8, 1024, 512, 48),
                 ("llama2-7b-q A", 16, 4096, 512, 32)]  # fmt: skip


class _Call:
    """A callable as time_case's workload: nothing to prepare."""

    def __init__(self, call):
        self.run = call

    def prepare(self):
        return (), None


def _grouped_calls(cuda, coeffs, grads, distribution):
    """The four timed calls of one grouped case: (op, callable)."""
    (_, r, c), k = grads.shape, coeffs.shape[1]
    family = (1, 0)  # seed, stream
    return {
        "mix_grouped": lambda: cuda.mix_grouped(coeffs, *family, r, c, 0.1, distribution),
        "mix per factor": lambda: [cuda.mix(a, *family, r, c, 0.1, distribution) for a in coeffs],
        "project_grouped": lambda: cuda.project_grouped(grads, *family, k, 0.1, distribution),
        "project per factor": lambda: [cuda.project(g, *family, k, 0.1, distribution) for g in grads],
    }


def grouped_rows(warmup, reps):
    from nola_kernels.backends import cuda_backend as cuda

    rows = []
    for name, r, c, k, groups in GROUPED_CASES:
        for distribution in MEASURED_DISTRIBUTIONS:
            coeffs, grads = torch.randn(groups, k, device="cuda"), torch.randn(groups, r, c, device="cuda")
            for op, call in _grouped_calls(cuda, coeffs, grads, distribution).items():
                measured = time_case(_Call(call), "cuda", warmup, reps)
                rows.append(dict(shape=name, G=groups, distribution=distribution, op=op, measured_us=measured * 1e6))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def model_shape(name, distribution):
    return replace(shape_of(name), distribution=distribution)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--smoke", action="store_true", help="one tiny shape on the CPU, two repetitions")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    if args.smoke:
        device, shapes, warmup, reps = "cpu", [SMOKE_SHAPE], 0, 2
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: nothing to measure (use --smoke on the CPU)")
            return 1
        shapes = [shape for shape in SHAPES["cuda"] if shape.name in BENCH_SHAPES]
        device, warmup, reps = "cuda", 3, args.reps
    rows = run(device, shapes, warmup, reps)
    grouped = grouped_rows(warmup, reps) if device == "cuda" and "cuda" in available_backends("cuda") else []
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results = {"device": name, "rows": rows, "grouped": grouped}
    (args.out / f"paths-{device}.json").write_text(json.dumps(results, indent=1))
    for line in choices(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
