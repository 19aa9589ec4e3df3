"""Time and peak memory of a whole model's train step (forward + backward): NOLA with grouped
generation (one pass per shared basis family) against NOLA's per-layer path, LoRA and the frozen
model alone, at GPT-2 small's shape (bench/workloads.py, MODEL_SHAPES).

    .venv/bin/python -m pytest bench/test_bench_grouped.py --benchmark-only
"""

import pytest
import torch
from workloads import (
    MODEL_IMPLEMENTATIONS,
    MODEL_SHAPES,
    MODEL_TARGETS,
    model_train_step,
    torch_threads,
    transformer,
)

from nola_kernels.memory import peak_memory

ROUNDS = 3


@pytest.mark.parametrize("implementation", MODEL_IMPLEMENTATIONS)
@pytest.mark.parametrize("targets", list(MODEL_TARGETS))
@pytest.mark.parametrize("shape", MODEL_SHAPES, ids=lambda shape: shape.name)
def test_train_step(benchmark, shape, targets, implementation):
    model = transformer(shape, implementation, targets)
    x = torch.randn(1, shape.tokens, shape.width, dtype=shape.dtype, requires_grad=implementation == "frozen")
    benchmark.group = f"cpu {shape.name} {targets} train step"
    with torch_threads(shape.threads):
        grads = benchmark.pedantic(model_train_step, args=(model, x), rounds=ROUNDS, warmup_rounds=1, iterations=1)
        _, peak_bytes = peak_memory(lambda: model_train_step(model, x), "cpu")
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    benchmark.extra_info.update(
        implementation=implementation, targets=targets, peak_bytes=peak_bytes, threads=shape.threads,
        tokens=shape.tokens, layers=shape.layers, width=shape.width, rank=shape.rank, k=shape.k,
        dtype=str(shape.dtype).removeprefix("torch."),
    )  # fmt: skip
