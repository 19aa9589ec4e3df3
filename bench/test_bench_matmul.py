"""Time and peak memory of nola_matmul against the naive, official, stored-basis and LoRA
baselines, per device, shape and pass.

Run with `python -m pytest bench/ --benchmark-only`; conftest.py prints the comparison tables.
"""

import pytest
import torch
from workloads import (
    SHAPES,
    Workload,
    assert_computed,
    generated_entries,
    implementations,
    synchronized,
    torch_threads,
)

from nola_kernels.memory import peak_memory

ROUNDS = 5  # few rounds, so the whole suite takes minutes on a 2-core CPU

_GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _cases():
    for device, shapes in SHAPES.items():
        for shape in shapes:
            for pass_name in shape.passes:
                for implementation in implementations(device):
                    yield pytest.param(
                        device, shape, pass_name, implementation,
                        marks=_GPU_MARKS if device == "cuda" else [],
                        id=f"{device}-{shape.label}-{pass_name}-{implementation}",
                    )  # fmt: skip


@pytest.mark.parametrize("device, shape, pass_name, implementation", list(_cases()))
def test_matmul(benchmark, record_case, device, shape, pass_name, implementation):
    workload = Workload(implementation, pass_name, shape, device)
    benchmark.group = f"{device} {shape.label} {pass_name}"
    with torch_threads(shape.threads):
        computed = benchmark.pedantic(
            synchronized(workload.run, device),
            setup=workload.prepare,
            rounds=ROUNDS,
            warmup_rounds=1,
            iterations=1,
        )
        assert_computed(computed)

        args, _ = workload.prepare()
        _, peak_bytes = peak_memory(lambda: workload.run(*args), device)
    entries = generated_entries(implementation, pass_name, shape)
    info = {"device": device, "implementation": implementation, "pass": pass_name, **shape.fields()}
    info.update(peak_bytes=peak_bytes, generated_entries=entries)
    if benchmark.stats is not None:  # None under --benchmark-disable: nothing was timed
        median_s = benchmark.stats.stats.median
        info.update(median_s=median_s, best_s=benchmark.stats.stats.min)
        info.update(entries_per_s=None if entries is None else entries / median_s)
        record_case(info)
    benchmark.extra_info.update(info)
