"""Serving benchmarks: an unmerged adapted layer's eval forward with the factor cache against a
LoRA layer's; a batch whose rows use many adapters of a bank against the same batch on one
adapter; loading a 1,000-adapter bank (time and memory); decode tokens/s of a tiny GPT-2 with
8 distinct adapters in the batch. Shapes in workloads.SERVING_SHAPES.

Run with `python -m pytest bench/test_bench_serving.py --benchmark-only`; compare the cases of a
group (pytest-benchmark prints them side by side)."""

import contextlib
import os
import time

import pytest
import torch
from torch import nn
from workloads import SERVING_SHAPES, synchronized, torch_threads

import nola_kernels
from nola_kernels import NOLALinear, row_adapters, set_factor_cache
from nola_kernels.lowrank import lowrank_delta

ROUNDS = 10
SEED_A, SEED_B = 1, 2
_GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _params(kind):
    for device, shapes in SERVING_SHAPES.items():
        for shape in shapes:
            if shape.name.endswith(kind):
                yield pytest.param(
                    device, shape, marks=_GPU_MARKS if device == "cuda" else [], id=f"{device}-{shape.label}"
                )


def _layer(shape, device, adapters=1):
    """An eval NOLALinear at the shape with `adapters` adapters ("a0", "a1", ...) of one basis
    family, random coefficients, all frozen."""
    torch.manual_seed(0)
    base = nn.Linear(shape.in_features, shape.out_features).to(device, shape.dtype)
    settings = dict(rank=shape.rank, num_basis=shape.k, lora_alpha=2.0 * shape.rank)
    layer = NOLALinear(base, seed_a=SEED_A, seed_b=SEED_B, adapter_name="a0", **settings).eval()
    config = layer.adapters["a0"].config
    for i in range(1, adapters):
        layer.add_adapter(f"a{i}", config, SEED_A, SEED_B)
    with torch.no_grad():
        for adapter in layer.adapters.values():
            adapter.requires_grad_(False)
            adapter.alpha.normal_()
            adapter.beta.normal_()
    return layer


def _timed(benchmark, fn, device, rounds=ROUNDS):
    with torch.no_grad():
        fn()  # fills the factor cache
        return benchmark.pedantic(synchronized(fn, device), rounds=rounds, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("implementation", ["nola-cached", "nola-uncached", "lora"])
@pytest.mark.parametrize("device, shape", list(_params("eval")))
def test_eval_forward(benchmark, device, shape, implementation):
    """One unmerged adapted layer, eval, no autograd: base + delta."""
    layer = _layer(shape, device)
    x = torch.randn(shape.tokens, shape.in_features, device=device, dtype=shape.dtype)
    benchmark.group = (
        f"eval forward {device} {shape.label} ({shape.tokens} tokens, r{shape.rank}, k=l={shape.k})"
    )
    if implementation == "lora":
        a, b = (f.to(shape.dtype) for f in layer.adapters["a0"].factors())
        b = b * layer.adapters["a0"].config.scaling

        def forward():
            return lowrank_delta(x, a, b, add_to=layer.base_layer(x))
    else:
        forward = lambda: layer(x)  # noqa: E731
    previous = set_factor_cache(implementation != "nola-uncached")
    try:
        with torch_threads(shape.threads):
            out = _timed(benchmark, forward, device)
    finally:
        set_factor_cache(*previous)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("rows_use", ["distinct-rows", "one-adapter-rows", "one-adapter-active"])
@pytest.mark.parametrize("device, shape", list(_params("decode")) + list(_params("prefill")))
def test_rows_of_a_bank(benchmark, device, shape, rows_use):
    """A batch of `rows` rows: inside row_adapters on `distinct` adapters of the bank or all on
    one, or without row_adapters on the layer's active adapter (the single-adapter path)."""
    layer = _layer(shape, device, adapters=shape.bank)
    names = [f"a{i * (shape.bank // shape.distinct)}" for i in range(shape.rows)]
    layer.set_active(names[0])
    rows = {"distinct-rows": names, "one-adapter-rows": [names[0]] * shape.rows}.get(rows_use)
    x = torch.randn(shape.rows, shape.tokens, shape.in_features, device=device, dtype=shape.dtype)
    benchmark.group = (
        f"rows {device} {shape.label} ({shape.rows} rows x {shape.tokens} tokens, bank of {shape.bank}, "
        f"r{shape.rank}, k=l={shape.k})"
    )
    block = row_adapters(layer, rows) if rows else contextlib.nullcontext()
    with torch_threads(shape.threads), block:
        out = _timed(benchmark, lambda: layer(x), device)
    assert torch.isfinite(out).all()


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def bank_files(tmp_path_factory):
    """1,000 adapter checkpoints of a stack of 4 GPT-2-medium-sized layers."""
    (shape,) = [s for s in SERVING_SHAPES["cpu"] if s.name.endswith("bank")]
    folder = tmp_path_factory.mktemp("bank")
    model = _stack(shape)
    nola_kernels.inject(model, r".*", rank=shape.rank, num_basis=shape.k, seed=3)
    paths = {}
    for i in range(shape.bank):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_()
        paths[f"task{i}"] = folder / f"task{i}.safetensors"
        nola_kernels.save_adapter(model, paths[f"task{i}"])
    return shape, paths


def _stack(shape):
    torch.manual_seed(0)
    return nn.Sequential(
        *(nn.Linear(shape.in_features, shape.out_features) for _ in range(shape.modules))
    ).eval()


def test_bank_load(benchmark, bank_files):
    """load_adapters of 1,000 files into a fresh stack: time, coefficient bytes, resident growth."""
    shape, paths = bank_files
    benchmark.group = (
        f"bank load cpu {shape.label} ({shape.bank} adapters x {shape.modules} layers, k=l={shape.k})"
    )
    grown = []

    def load(model):
        before = _resident_bytes()
        nola_kernels.load_adapters(model, paths)
        grown.append(_resident_bytes() - before)

    with torch_threads(shape.threads):
        benchmark.pedantic(load, setup=lambda: ((_stack(shape),), {}), rounds=2, iterations=1)
    model = _stack(shape)
    load(model)
    layers = nola_kernels.adapted_modules(model).values()
    coefficient_bytes = sum(
        p.numel() * p.element_size() for layer in layers for p in layer.adapters.parameters()
    )
    assert coefficient_bytes == 4 * (2 * shape.k) * shape.modules * shape.bank
    benchmark.extra_info.update(coefficient_bytes=coefficient_bytes, resident_growth_bytes=grown[-1])
    print(
        f"\nbank: coefficients {coefficient_bytes / 2**20:.1f} MiB, resident growth {grown[-1] / 2**20:.1f} MiB"
    )


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=128, n_embd=128, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("rows_use", ["8-distinct", "one-adapter", "base"])
def test_decode_tokens_per_second(benchmark, rows_use):
    """generate() of 32 new tokens for 8 rows of 16 prompt tokens on a tiny GPT-2 (128 wide, 4
    layers, c_attn and c_proj adapted, r8, k=l=256)."""
    model = _tiny_gpt2()
    for i in range(8):
        nola_kernels.inject(model, ["c_attn", "c_proj"], rank=8, num_basis=256, seed=5, adapter_name=f"t{i}")
        with torch.no_grad():
            for layer in nola_kernels.adapted_modules(model).values():
                layer.adapters[f"t{i}"].alpha.normal_()
                layer.adapters[f"t{i}"].beta.normal_()
    model.requires_grad_(False)
    rows = {"8-distinct": [f"t{i}" for i in range(8)], "one-adapter": ["t0"] * 8, "base": [None] * 8}[
        rows_use
    ]
    ids = torch.randint(1, 256, (8, 16))
    new_tokens = 32
    benchmark.group = "decode tiny gpt2 cpu (8 rows, 16 + 32 tokens)"

    def generate():
        started = time.perf_counter()
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip
        return out, time.perf_counter() - started

    with torch_threads(2), row_adapters(model, rows):
        _, seconds = _timed(benchmark, generate, "cpu", rounds=3)
    if benchmark.stats is not None:
        benchmark.extra_info["tokens_per_s"] = 8 * new_tokens / benchmark.stats.stats.median
        print(f"\n{rows_use}: {benchmark.extra_info['tokens_per_s']:.0f} tokens/s")
    assert seconds > 0
