"""Time and peak memory of nola_matmul against the naive, official and LoRA baselines.

Run with `python -m pytest bench/ --benchmark-only`; conftest.py prints the comparison tables.
"""

import pytest
import torch
from workloads import (
    IMPLEMENTATIONS,
    PASSES,
    SHAPES,
    Workload,
    assert_computed,
    generated_entries,
    synchronized,
)

from nola_kernels.memory import peak_memory

ROUNDS = 5  # few rounds, so the whole suite takes minutes on a 2-core CPU

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matmul(benchmark, record_case, implementation, pass_name, shape_name, device):
    shape = SHAPES[shape_name]
    workload = Workload(implementation, pass_name, shape, device)
    benchmark.group = f"{device} {shape_name} {pass_name}"
    computed = benchmark.pedantic(
        synchronized(workload.run, device),
        setup=workload.clear_grads,
        rounds=ROUNDS,
        warmup_rounds=1,
        iterations=1,
    )
    assert_computed(computed)

    workload.clear_grads()
    _, peak_bytes = peak_memory(workload.run, device)
    entries = generated_entries(implementation, pass_name, shape)
    info = {"device": device, "implementation": implementation, "pass": pass_name, **shape.fields()}
    info.update(peak_bytes=peak_bytes, generated_entries=entries)
    if benchmark.stats is not None:  # None under --benchmark-disable: nothing was timed
        median_s = benchmark.stats.stats.median
        info.update(median_s=median_s, entries_per_s=None if entries is None else entries / median_s)
        record_case(info)
    benchmark.extra_info.update(info)
