"""Basis generation rates of the compiled kernels.

- CUDA: the mix kernel against its integer-ALU bound, a Philox-only kernel that generates as many
  uniform entries and only sums them. Target: at least 60% of the bound.
- CPU: the mix and project kernels of the CPU backend in entries per second and per core, on 1
  and 2 threads, with each instruction set's Philox code, for every distribution (v1's and
  v1.1's side by side). Target: at least 3e8 uniform entries per core. The PyTorch backend's
  mix and project beside them, for every distribution, on 1 thread.

Each device's rates go to generation-rate-<device>.json in $OUT (or bench/results/).
"""

import json
import os
from pathlib import Path

import pytest
import torch
from report import device_name
from workloads import synchronized, torch_threads

from nola_kernels.backends import cpu_backend, cuda_backend, torch_backend
from nola_kernels.basis import DISTRIBUTIONS

# (name, rows, cols, k): the A factors of the benchmark shapes, and one large enough to fill any GPU.
CASES = [
    ("gpt2-medium A", 8, 1024, 512),
    ("wide-4096 A", 16, 4096, 128),
    ("rank-64 4096 A", 64, 4096, 512),
]
TARGET_FRACTION = 0.6
CPU_CASES = CASES[:2]
CPU_TARGET_PER_CORE = 3e8
CPU_ROUNDS = 20
TORCH_ROUNDS = 5  # the PyTorch path generates at about a tenth of the kernels' rate
CPU_BUILT = cpu_backend.unavailable_reason(torch.device("cpu")) is None
# Each instruction set's own code ("best" is one of them).
CPU_INSTRUCTION_SETS = (
    [n for n in cpu_backend.supported_instruction_sets() if n != "best"] if CPU_BUILT else []
)
_results = {"cuda": [], "cpu": []}


def _median_seconds(fn, repeats=20):
    fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return sorted(times)[len(times) // 2]


def _report(benchmark, capsys, device, result, line):
    """Keep one case's result (in the benchmark's extra info and the device's JSON) and print `line`."""
    benchmark.extra_info.update(result)
    _results[device].append(result)
    folder = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"generation-rate-{device}.json").write_text(json.dumps(_results[device], indent=2) + "\n")
    with capsys.disabled():
        print("\n" + line)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or cuda_backend.unavailable_reason(torch.device("cuda")) is not None,
    reason="needs CUDA and the built CUDA extension",
)
@pytest.mark.parametrize("name, rows, cols, k", CASES, ids=[case[0] for case in CASES])
def test_generation_rate_cuda(benchmark, capsys, name, rows, cols, k):
    coeffs = torch.randn(k, device="cuda")
    entries = k * rows * cols

    def mix():
        return cuda_backend.mix(coeffs, 1, 0, rows, cols, 1.0, "uniform")

    def bound():
        return cuda_backend.philox_rate(coeffs, entries // 4, 1)  # 4 uniform entries per call

    mix_s, bound_s = _median_seconds(mix), _median_seconds(bound)
    benchmark.group = "cuda generation rate"
    benchmark.pedantic(synchronized(mix, "cuda"), rounds=5, warmup_rounds=1, iterations=1)
    result = {
        "case": name,
        "gpu": torch.cuda.get_device_name(),
        "entries": entries,
        "mix_G_entries_per_s": entries / mix_s / 1e9,
        "philox_only_G_entries_per_s": entries / bound_s / 1e9,
        "fraction_of_bound": bound_s / mix_s,
        "target": TARGET_FRACTION,
    }
    line = (
        f"{name}: mix {result['mix_G_entries_per_s']:.1f} G entries/s, Philox only "
        f"{result['philox_only_G_entries_per_s']:.1f}: {result['fraction_of_bound']:.0%} of the bound "
        f"(target {TARGET_FRACTION:.0%})"
    )
    _report(benchmark, capsys, "cuda", result, line)


def _cpu_rate(benchmark, capsys, case, op, calls, threads, rounds, **labels):
    """Time calls[op] on `threads` threads and report its entries per second (the fastest round:
    the machine is shared)."""
    name, rows, cols, k = case
    benchmark.group = "cpu generation rate"
    with torch_threads(threads):
        benchmark.pedantic(calls[op], rounds=rounds, warmup_rounds=2, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: nothing was timed
        return
    entries = k * rows * cols
    rate = entries / benchmark.stats.stats.min
    result = {
        "case": name,
        "op": op,
        **labels,
        "threads": threads,
        "cpu": device_name("cpu"),
        "entries": entries,
        "M_entries_per_s": rate / 1e6,
        "M_entries_per_s_per_core": rate / threads / 1e6,
        "target_per_core": CPU_TARGET_PER_CORE / 1e6,
    }
    shown = ", ".join(str(value) for value in labels.values())
    line = (
        f"{name} {op} ({shown}, {threads} threads): {rate / 1e6:.0f} M entries/s, "
        f"{rate / threads / 1e6:.0f} per core (target {CPU_TARGET_PER_CORE / 1e6:.0f} uniform)"
    )
    _report(benchmark, capsys, "cpu", result, line)


def _calls(backend, case, distribution):
    _, rows, cols, k = case
    coeffs, grad = torch.randn(k), torch.randn(rows, cols)
    return {
        "mix": lambda: backend.mix(coeffs, 1, 0, rows, cols, 1.0, distribution),
        "project": lambda: backend.project(grad, 1, 0, k, 1.0, distribution),
    }


@pytest.mark.skipif(not CPU_BUILT, reason="needs the built CPU library")
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("op", ["mix", "project"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("instruction_set", CPU_INSTRUCTION_SETS)
@pytest.mark.parametrize("case", CPU_CASES, ids=[case[0] for case in CPU_CASES])
def test_generation_rate_cpu(benchmark, capsys, case, instruction_set, threads, op, distribution):
    calls = _calls(cpu_backend, case, distribution)
    labels = dict(backend="cpu", distribution=distribution, instruction_set=instruction_set)
    with cpu_backend.instruction_set(instruction_set):
        _cpu_rate(benchmark, capsys, case, op, calls, threads, CPU_ROUNDS, **labels)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("op", ["mix", "project"])
@pytest.mark.parametrize("case", CPU_CASES[:1], ids=[CPU_CASES[0][0]])
def test_generation_rate_torch(benchmark, capsys, case, op, distribution):
    calls = _calls(torch_backend, case, distribution)
    labels = dict(backend="torch", distribution=distribution)
    _cpu_rate(benchmark, capsys, case, op, calls, 1, TORCH_ROUNDS, **labels)
