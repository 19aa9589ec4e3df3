"""The performance model runs, meets the targets it is held to at LLaMA-2-7B q_proj, routes by the
loop counts of the SASS file, and the device script's Python runs on the CPU."""

import json
from pathlib import Path

import device_paths
import perf_model
import pytest
import torch

from nola_kernels import perf_model as model
from nola_kernels.backends import native_backends
from nola_kernels.basis import DISTRIBUTIONS, V1_DISTRIBUTIONS
from nola_kernels.lowrank import LowRankShape

SASS_JSON = Path(__file__).parent / "results" / "sass-sm90.json"
# Loops of the SASS budget that no path of the model prices: the Philox bound kernel, and the
# grouped kernels (the model's grouped step prices each entry with the flat CUDA loops).
UNPRICED = ("philox_rate (bound)", "grouped ")


def test_the_tables_print_before_and_after_for_both_shapes(capsys):
    perf_model.main([])
    printed = capsys.readouterr().out
    assert "not a measurement" in printed
    for name in perf_model.BENCH_SHAPES:
        assert f"### {name}" in printed
    # Two shapes: "after" for every distribution, "before" (the review's counts) for v1's.
    assert printed.count("after (cuda)") == 2 * len(DISTRIBUTIONS)
    assert printed.count("before (cuda)") == 2 * len(V1_DISTRIBUTIONS)
    assert "Targets at llama2-7b-q" in printed and ": met." in printed


def test_q_proj_targets_by_the_model_after_and_not_before():
    shape = perf_model.shape_of("llama2-7b-q")
    after = perf_model.rows_for(shape, model.H100, model.LOOP_COUNTS)
    before = perf_model.rows_for(shape, model.H100, perf_model.REVIEW_COUNTS)
    assert perf_model.after_default("cuda", shape) == "cuda-composed (add in GEMM)"
    assert perf_model.targets_met(after, "cuda-composed (add in GEMM)")
    assert not perf_model.targets_met(before, perf_model.before_default("cuda"))


def test_the_package_counts_are_the_sass_files():
    """nola_kernels.perf_model.SASS_COUNTS holds each loop of bench/results/sass-sm90.json that the
    model prices (the slowest of its shapes), and no other: it cannot drift from the file."""
    measured = {}
    for row in json.loads(SASS_JSON.read_text()):
        key = (row["kernel"], row["backend"], row["distribution"])
        if not row["kernel"].startswith(UNPRICED):
            loop = (row["sass_per_entry"], row["philox_calls_per_entry"])
            measured[key] = max(measured.get(key, loop), loop)
    table = {key: (loop.sass_per_entry, loop.philox_calls_per_entry) for key, loop in model.SASS_COUNTS.items()}
    expected = "\n".join(f"    ({', '.join(map(json.dumps, key))}): _measured{loop}," for key, loop in measured.items())
    assert table == measured, f"SASS_COUNTS differs from {SASS_JSON.name}; it should read:\n{expected}"


def test_every_kernel_of_every_path_has_a_count_and_a_positive_time():
    for name in perf_model.BENCH_SHAPES:
        for distribution in ("uniform", "rademacher"):
            shape = perf_model.shape_of(name, distribution)
            for path in model.PATHS:
                for layer in (False, True):
                    for backward in (False, True):
                        steps = model.pass_steps(path, shape, layer=layer, backward=backward)
                        assert steps and all(step.gpu_s >= 0 for step in steps), (name, path)
                        assert model.total_s(steps) > 0


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_prefers_fused_follows_the_model(backend):
    module = pytest.importorskip(f"nola_kernels.backends.{backend}_backend")
    for tokens in (1, 64, 512, 4096):
        for dtype in (torch.float32, torch.bfloat16):
            shape = LowRankShape(tokens, 1024, 4096, 16, 512, 512, dtype)
            assert module.prefers_fused(shape) == model.fused_wins(backend, shape), shape


def test_device_paths_runs_on_the_cpu(tmp_path, capsys):
    assert device_paths.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "paths-cpu.json").read_text())["rows"]
    assert {row["pass_name"] for row in rows} == set(device_paths.PASSES)
    native = {f"nola-{name}" for name in native_backends(torch.device("cpu"))}
    assert {row["implementation"] for row in rows} == native | {"lora", "official"}
    assert all(row["measured_us"] > 0 for row in rows)


def test_a_product_that_adds_into_a_layer_is_routed_by_the_whole_layer():
    # GPT-2 medium, rademacher, 512 tokens: the fused delta alone is faster by the model, but the
    # composed path takes the layer's add into its last GEMM and wins the layer.
    delta = LowRankShape(512, 1024, 1024, 8, 512, 512, torch.float32, "rademacher")
    layer = LowRankShape(512, 1024, 1024, 8, 512, 512, torch.float32, "rademacher", adds=True)
    assert model.fused_wins("triton", delta) and not model.fused_wins("triton", layer)
    for shape in (delta, layer):
        fused, composed = (model.predict_s(f"triton-{path}", shape, layer=shape.adds) for path in ("fused", "composed"))
        assert model.fused_wins("triton", shape) == (fused < composed)
