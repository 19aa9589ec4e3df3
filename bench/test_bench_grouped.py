"""Time and peak memory of a whole model's train step (forward + backward): NOLA with grouped
generation (one pass per shared basis family) against NOLA's per-layer path, LoRA and the frozen
model alone, at GPT-2 small's shape (bench/workloads.py, MODEL_SHAPES).

    .venv/bin/python -m pytest bench/test_bench_grouped.py --benchmark-only
"""

import perf_model
import pytest
import torch
from workloads import (
    MODEL_IMPLEMENTATIONS,
    MODEL_SHAPES,
    MODEL_TARGETS,
    model_train_step,
    synchronized,
    torch_threads,
    transformer,
)

from nola_kernels import perf_model as model
from nola_kernels.memory import peak_memory

ROUNDS = 3
_GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
SHAPES = [
    pytest.param(shape, marks=_GPU_MARKS if shape.device == "cuda" else [], id=f"{shape.device}-{shape.name}")
    for shape in MODEL_SHAPES
]


@pytest.mark.parametrize("implementation", MODEL_IMPLEMENTATIONS)
@pytest.mark.parametrize("targets", list(MODEL_TARGETS))
@pytest.mark.parametrize("shape", SHAPES)
def test_train_step(benchmark, shape, targets, implementation):
    model = transformer(shape, implementation, targets)
    x = torch.randn(
        1, shape.tokens, shape.width, device=shape.device, dtype=shape.dtype, requires_grad=implementation == "frozen"
    )
    benchmark.group = f"{shape.device} {shape.name} {targets} train step"
    run = synchronized(model_train_step, shape.device)
    with torch_threads(shape.threads):
        grads = benchmark.pedantic(run, args=(model, x), rounds=ROUNDS, warmup_rounds=1, iterations=1)
        # Under --benchmark-disable (the test suite) the one call checks that the step runs.
        peak_bytes = None if benchmark.disabled else peak_memory(lambda: run(model, x), shape.device)[1]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    benchmark.extra_info.update(
        implementation=implementation, targets=targets, peak_bytes=peak_bytes, device=shape.device, threads=shape.threads,
        tokens=shape.tokens, layers=shape.layers, width=shape.width, rank=shape.rank, k=shape.k,
        dtype=str(shape.dtype).removeprefix("torch."),
    )  # fmt: skip


def test_the_model_predicts_a_grouped_llama_step_within_its_target():
    """Not a measurement: bench/perf_model.py's prediction for LLaMA-2-7B with shared bases."""
    ratios = perf_model.model_step_ratios(perf_model.llama2_7b(), model.H100, model.LOOP_COUNTS)
    assert ratios["nola-grouped"][1] <= perf_model.GROUPED_STEP_OVER_LORA
    assert ratios["nola-grouped"][0] < min(ms for path, (ms, _) in ratios.items() if path not in ("lora", "nola-grouped"))
