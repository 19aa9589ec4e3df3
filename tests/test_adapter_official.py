"""Official NOLA checkpoints: read, rebuild the bases as the official code does, run, merge and
export. The checkpoint is made here by a short re-implementation of the official math."""

import copy
import math

import pytest
import torch
from adapter_models import tiny_gpt2
from official_gpt2 import (
    EMBED,
    GPT2_ADAPTERS,
    RANK,
    K,
    fields_of,
    official_gpt2_run,
    official_gpt2_state,
    official_weight,
)

from nola_kernels import official_rng
from nola_kernels.adapters.official import gpt2_factors, merge_factors, official_factors, strip_peft_prefix
from nola_kernels.adapters.peft_export import write_peft_lora
from nola_kernels.official_rng import CudaLayout, cuda_uniform, official_basis, official_mix

LORA_ALPHA = 4.0
SCALE = LORA_ALPHA / RANK


def test_gpt2_checkpoint_runs_merges_and_exports_like_the_official_code(tmp_path):
    model = tiny_gpt2()
    state = official_gpt2_state(GPT2_ADAPTERS)
    torch.save(state, tmp_path / "official.bin")
    tokens = torch.randint(0, 64, (2, 12))
    expected = official_gpt2_run(model, state, tokens, SCALE)
    with torch.no_grad():
        assert not torch.allclose(model(tokens).logits, expected, atol=1e-3)

    factors = official_factors(tmp_path / "official.bin", layout="generator")
    prefix = "transformer.h.1.attn.nola_value"
    torch.testing.assert_close(factors[prefix][0], official_weight(fields_of(state, prefix, "A")))
    fused = gpt2_factors(factors, EMBED)
    assert list(fused) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]

    peft = pytest.importorskip("peft")
    write_peft_lora(tmp_path / "lora", fused, rank=2 * RANK, lora_alpha=SCALE * 2 * RANK, fan_in_fan_out=True)
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(tokens).logits, expected, rtol=1e-5, atol=1e-5)

    merge_factors(model, fused, SCALE)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, expected, rtol=1e-5, atol=1e-5)


def test_llama_style_names_and_bfloat16_bases():
    # PEFT 0.4-style keys of the official LLaMA runs, whose bases are drawn in bfloat16.
    layer = torch.nn.Linear(24, 16)
    state = {}
    for role, shape in (("A", (RANK, 24)), ("B", (16, RANK))):
        state[f"base_model.model.layers.0.q_proj.lora_{role}.weight"] = torch.randn(shape) / 5
        state[f"base_model.model.layers.0.q_proj.lora_{role}.seed"] = torch.randint(int(1e10), (1,))
        state[f"base_model.model.layers.0.q_proj.lora_{role}.coefficients"] = torch.randn(K)
    factors = strip_peft_prefix(official_factors(state, layout="generator", dtype=torch.bfloat16))
    assert list(factors) == ["layers.0.q_proj"]
    a, _ = factors["layers.0.q_proj"]
    fields = {
        f: state[f"base_model.model.layers.0.q_proj.lora_A.{f}"] for f in ("coefficients", "seed", "weight")
    }
    generator = torch.Generator().manual_seed(int(fields["seed"]))
    basis = torch.empty(K, RANK, 24, dtype=torch.bfloat16).uniform_(-1, 1, generator=generator)
    basis = (basis * (1.0 / math.sqrt(K))).float()
    torch.testing.assert_close(a, fields["weight"] + torch.einsum("b,boi->oi", fields["coefficients"], basis))

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.layers[0].q_proj = layer
    before = layer.weight.detach().clone()
    merge_factors(model, factors, SCALE)
    a, b = factors["layers.0.q_proj"]
    torch.testing.assert_close(layer.weight.detach(), before + SCALE * b @ a)


def test_incomplete_checkpoint_is_refused():
    state = official_gpt2_state(GPT2_ADAPTERS, blocks=1)
    del state["transformer.h.0.attn.nola_value.lora_B.seed"]
    with pytest.raises(ValueError, match=r"incomplete: transformer\.h\.0\.attn\.nola_value\.lora_B"):
        official_factors(state, layout="generator")


def test_cuda_layout_against_philox_known_answers():
    # Seed 0 on a GPU of one 256-thread block: element j of the first 1024 is word j // 256 of
    # Philox(counter (0, 0, j % 256, 0), key 0). Random123's vector for counter 0 and key 0:
    words = (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    layout = CudaLayout(multiprocessors=1, max_threads_per_multiprocessor=256)
    values = cuda_uniform(0, 0, 1024, 3000, layout)
    for w, word in enumerate(words):
        u = float(torch.tensor(float(word), dtype=torch.float32)) * 2.0**-32 + 2.0**-33
        expected = torch.tensor(2 * float(torch.tensor(u, dtype=torch.float32)) - 1, dtype=torch.float32)
        assert values[256 * w] == expected
    assert values.abs().max() <= 1 and values.unique().numel() > 1000
    assert layout.total_threads(3000) == 256 and CudaLayout(132).total_threads(10**9) == 270_336
    assert CudaLayout(132).total_threads(1000) == 1024


def test_cuda_layout_mix_by_blocks_matches_the_whole_basis(monkeypatch):
    coefficients = torch.randn(12)
    layout = CudaLayout(1, 256)  # 720 entries over 256 threads: three loop steps
    basis = official_basis(77, 12, (6, 10), layout=layout)
    monkeypatch.setattr(official_rng, "LAYOUT_BLOCK_ENTRIES", 130)  # blocks of 2 matrices
    mixed = official_mix(coefficients, 77, (6, 10), layout=layout)
    torch.testing.assert_close(mixed, torch.einsum("b,boi->oi", coefficients, basis))
    # Another GPU (here two blocks of threads) puts other numbers at the same places.
    assert not torch.equal(basis, official_basis(77, 12, (6, 10), layout=CudaLayout(2, 256)))


@pytest.mark.gpu
@pytest.mark.parametrize("numel", [1000, 3 * 270_336 + 17, 9_000_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_layout_reproduces_this_gpus_uniform(numel, dtype):
    seed = 9_876_543_210
    torch.manual_seed(seed)
    drawn = torch.empty(numel, device="cuda", dtype=dtype).uniform_(-1, 1).cpu()
    layout = CudaLayout.of_device()
    ours = official_basis(seed, 1, (1, numel), layout=layout, device="cuda", dtype=dtype).cpu().view(-1)
    assert torch.equal(ours, drawn)
    assert torch.equal(official_basis(seed, 1, (1, numel), layout="generator", device="cuda").cpu().view(-1), drawn)
