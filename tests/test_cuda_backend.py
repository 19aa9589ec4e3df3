"""The CUDA backend module on any machine: how it reports a missing or broken extension, its
choice of the fused path, the official families in every op, and (where
the extension is built) its ops under torch.ops."""

import warnings

import pytest
import torch

from nola_kernels import perf_model
from nola_kernels.backends import cuda_backend, implements
from nola_kernels.lowrank import LowRankShape
from nola_kernels.official_rng import official_distribution

OPS = ("mix", "project", "mix_grouped", "project_grouped", "lowrank_forward", "lowrank_backward", "philox_rate")
built = pytest.mark.skipif(cuda_backend._ops is None, reason="the CUDA extension is not built here")


def test_an_extension_never_built_is_a_reason_not_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops, reason = cuda_backend._load("nola_kernels._no_such_extension")
    assert ops is None and "not built" in reason


def test_an_extension_that_fails_to_load_warns_once_with_the_error(tmp_path, monkeypatch):
    (tmp_path / "broken_extension.py").write_text("raise ImportError('undefined symbol: _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match="failed to load") as caught:
        ops, reason = cuda_backend._load("broken_extension")
    assert len(caught) == 1
    assert ops is None and "undefined symbol: _ZN3c10" in reason


def test_unavailable_on_cpu_tensors_and_asked_again_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cuda_backend.unavailable_reason(torch.device("cpu")) is not None
        assert cuda_backend.unavailable_reason(torch.device("cpu")) is not None


@pytest.mark.parametrize(
    "capability, available", [((7, 5), False), ((7, 0), False), ((8, 0), True), ((12, 0), True)]
)
def test_gpus_before_sm80_are_unavailable(monkeypatch, capability, available):
    # The extension holds sm_80 and sm_90a code and compute_80 PTX: nothing runs on Volta or Turing.
    monkeypatch.setattr(cuda_backend, "_ops", object())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    reason = cuda_backend.unavailable_reason(torch.device("cuda", 0))
    assert (reason is None) == available
    if not available:
        assert f"{capability[0]}.{capability[1]}" in reason and "8.0" in reason


def test_fused_path_only_where_the_model_says_it_beats_cublas():
    # LLaMA-2-7B q_proj: the float32 FMA GEMM's products cost several times cuBLAS's.
    assert not cuda_backend.prefers_fused(LowRankShape(4096, 4096, 4096, 16, 512, 512, torch.bfloat16))
    assert not cuda_backend.prefers_fused(LowRankShape(1 << 20, 1024, 1024, 8, 16, 16, torch.bfloat16))
    for tokens in (1, 64, 512, 4096):
        for dtype in (torch.float32, torch.bfloat16):
            shape = LowRankShape(tokens, 1024, 1024, 8, 512, 512, dtype, "rademacher")
            assert cuda_backend.prefers_fused(shape) == perf_model.fused_wins("cuda", shape), shape


@built
def test_ops_are_registered_under_torch_ops():
    namespace = torch.ops.nola_kernels_cuda
    for name in OPS:
        schema = getattr(namespace, name).default._schema
        assert schema.name == f"nola_kernels_cuda::{name}"
    assert cuda_backend.unavailable_reason(torch.device("cpu")) == "the CUDA kernels run on CUDA tensors only"


def test_the_official_families_run_in_every_op():
    # The grouped ops in csrc/grouped.cu, mix and project in csrc/official.cu; nola_matmul and the
    # low-rank ops compose those and torch's matmul.
    for dtype, rule in [(torch.float32, "current"), (torch.bfloat16, "legacy"), (torch.float16, "current")]:
        name = official_distribution("H200", dtype, rule)
        for op in ("mix", "project", "mix_grouped", "project_grouped", "lowrank_forward", "lowrank_backward",
                   "nola_matmul"):  # fmt: skip
            assert implements("cuda", op, name), (op, name)