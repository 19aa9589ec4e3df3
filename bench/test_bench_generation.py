"""The CUDA mix kernel's basis generation rate against its integer-ALU bound: a Philox-only kernel
that generates as many uniform entries and only sums them. Target: at least 60% of the bound.
CUDA only; each case's rates go to generation-rate-cuda.json in $OUT (or bench/results/)."""

import json
import os
from pathlib import Path

import pytest
import torch
from workloads import synchronized

from nola_kernels.backends import cuda_backend

# (name, rows, cols, k): the A factors of the benchmark shapes, and one large enough to fill any GPU.
CASES = [
    ("gpt2-medium A", 8, 1024, 512),
    ("wide-4096 A", 16, 4096, 128),
    ("rank-64 4096 A", 64, 4096, 512),
]
TARGET_FRACTION = 0.6
_results = []


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


def _write(results):
    folder = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generation-rate-cuda.json").write_text(json.dumps(results, indent=2) + "\n")


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
    benchmark.extra_info.update(result)
    _results.append(result)
    _write(_results)
    with capsys.disabled():
        print(
            f"\n{name}: mix {result['mix_G_entries_per_s']:.1f} G entries/s, Philox only "
            f"{result['philox_only_G_entries_per_s']:.1f}: {result['fraction_of_bound']:.0%} of the bound "
            f"(target {TARGET_FRACTION:.0%})"
        )
