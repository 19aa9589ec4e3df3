"""Official checkpoints as the official scripts write them (github UCDvision/NOLA): GPT-2's
gpt2_ft.py ({"model_state_dict": ...}, keys "module."-prefixed by DistributedDataParallel, the
MLP adapters of --lora_mlp runs), the LLaMA runs' PEFT 0.4 folders, the required layout and
scaling, and torch's two rules for a half-precision uniform that rounds to the upper bound."""

import json
import math

import numpy as np
import pytest
import torch
from adapter_models import tiny_gpt2
from official_gpt2 import (
    EMBED,
    GPT2_ADAPTERS,
    GPT2_MLP_ADAPTERS,
    RANK,
    K,
    official_gpt2_run,
    official_gpt2_state,
)
from philox_oracle import philox

from nola_kernels.adapters import (
    OFFICIAL_GPT2_SCALING,
    gpt2_factors,
    load_official,
    merge_factors,
    official_factors,
)
from nola_kernels.official_rng import CudaLayout, cuda_uniform, official_basis

LORA_ALPHA = 8.0


def as_gpt2_ft_saves_it(state, full_model=True):
    """What gpt2_ft.py's torch.save writes: {"model_state_dict": state} of the DDP-wrapped model
    (every key "module."-prefixed); the final save holds the whole model, not only lora_ keys."""
    if full_model:
        state = {**state, "transformer.wte.weight": torch.randn(64, EMBED), "lm_head.decoder.weight": torch.randn(3)}
    return {"model_state_dict": {f"module.{key}": value for key, value in state.items()}}


@pytest.mark.parametrize("full_model", [False, True], ids=["lora-state-dict", "final-full-save"])
def test_gpt2_ft_files_with_mlp_adapters_load_as_written(tmp_path, full_model):
    state = official_gpt2_state(GPT2_ADAPTERS + GPT2_MLP_ADAPTERS)
    path = tmp_path / "model.26290.pt"
    torch.save(as_gpt2_ft_saves_it(state, full_model), path)
    model = tiny_gpt2()
    tokens = torch.randint(0, 64, (2, 12))
    scaling = LORA_ALPHA / RANK
    expected = official_gpt2_run(model, state, tokens, scaling)

    adapter = load_official(path, layout="generator", scaling=scaling)
    assert adapter.scaling == scaling
    assert set(adapter.factors) == {name.removeprefix("module.").rsplit(".lora_", 1)[0] for name in state}
    mapped = gpt2_factors(adapter.factors, EMBED)
    assert list(mapped) == [
        f"transformer.h.{block}.{name}" for block in (0, 1) for name in ("attn.c_attn", "mlp.c_fc", "mlp.c_proj")
    ]
    merge_factors(model, mapped, adapter.scaling)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, expected, rtol=1e-5, atol=1e-5)


def test_gpt2_files_need_the_scaling_and_every_file_the_layout(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(as_gpt2_ft_saves_it(official_gpt2_state(GPT2_ADAPTERS, blocks=1)), path)
    with pytest.raises(ValueError, match=r"scaling is required.*GPT-2 M.*1\.0.*GPT-2 L.*0\.25"):
        load_official(path, layout="generator")
    assert OFFICIAL_GPT2_SCALING == {"GPT-2 M": 1.0, "GPT-2 L": 0.25}
    for call in (lambda: load_official(path, scaling=1.0), lambda: official_factors(path)):
        with pytest.raises(TypeError, match=r"layout is required.*'A100'.*'generator'"):
            call()
    with pytest.raises(ValueError, match=r"layout must be a CudaLayout.*got 'H100'"):
        load_official(path, layout="H100", scaling=1.0)
    with pytest.raises(ValueError, match=r"scaling must be finite"):
        load_official(path, layout="generator", scaling=math.inf)


def test_a_half_block_is_refused_by_the_fused_attention():
    state = official_gpt2_state((("attn.nola_query", EMBED, EMBED),), blocks=1)
    factors = official_factors(state, layout="generator")
    with pytest.raises(ValueError, match=r"block 0 has nola_value missing"):
        gpt2_factors(factors, EMBED)
    with pytest.raises(ValueError, match=r"h\.0\.attn\.c_attn is not an official GPT-2 adapter"):
        gpt2_factors({"transformer.h.0.attn.c_attn": factors["transformer.h.0.attn.nola_query"]}, EMBED)


def write_llama_folder(folder, state, **config):
    """An official LLaMA adapter folder as its vendored PEFT 0.4 save_pretrained writes it."""
    folder.mkdir()
    settings = dict(peft_type="LORA", task_type="CAUSAL_LM", r=RANK, lora_alpha=4.0, use_nola=True,
                    nola_num_basis=K, target_modules=["q_proj"], bias="none")  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps({**settings, **config}))
    torch.save(state, folder / "adapter_model.bin")


def llama_state():
    state = {}
    for role, shape in (("A", (RANK, 24)), ("B", (16, RANK))):
        prefix = f"base_model.model.model.layers.0.self_attn.q_proj.lora_{role}"
        state[f"{prefix}.weight"] = torch.randn(shape) / 5
        state[f"{prefix}.seed"] = torch.randint(int(1e10), (1,))
        state[f"{prefix}.coefficients"] = torch.randn(K)
    return state


def test_llama_folders_give_their_scaling(tmp_path):
    state = llama_state()
    write_llama_folder(tmp_path / "run", state)
    adapter = load_official(tmp_path / "run", layout="generator", dtype=torch.bfloat16)
    assert adapter.scaling == 4.0 / RANK
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    assert list(adapter.factors) == [name]
    assert load_official(tmp_path / "run", layout="generator", scaling=2.0).scaling == 2.0
    with pytest.raises(ValueError, match=r"scaling=3\.0 disagrees with .*adapter_config\.json: lora_alpha / r = 2\.0"):
        load_official(tmp_path / "run", layout="generator", scaling=3.0)

    write_llama_folder(tmp_path / "lora", state, use_nola=False)
    with pytest.raises(ValueError, match=r"not an official NOLA adapter config"):
        load_official(tmp_path / "lora", layout="generator")
    write_llama_folder(tmp_path / "no-alpha", state, lora_alpha="four")
    with pytest.raises(ValueError, match=r"needs numbers lora_alpha and r"):
        load_official(tmp_path / "no-alpha", layout="generator")


def bfloat16_round(values):
    """float32 -> bfloat16 -> float32 by round-to-nearest-even on the bits, without torch."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def oracle_uniform(seed, index, threads):
    """The GPU's float32 value at `index` (a known answer from the scalar Philox oracle): word
    (index mod 4T) div T of Philox(step, 0, thread), u = word 2^-32 + 2^-33, value 2u - 1, and
    the float32 draw u == 1 mapped to -1 (both rules)."""
    word = philox((index // (4 * threads), 0, index % threads, 0), (seed % 2**32, seed // 2**32))
    word = word[(index % (4 * threads)) // threads]
    u = np.float32(word) * np.float32(2.0**-32) + np.float32(2.0**-33)
    return np.float32(-1.0) if u == 1 else np.float32(2) * u - np.float32(1)


def test_uniform_rules_differ_exactly_where_bfloat16_rounds_up_to_one():
    seed, numel, layout = 4_242_424_242, 1 << 16, CudaLayout(1, 256)
    current = official_basis(seed, 1, (1, numel), layout=layout, dtype=torch.bfloat16).view(-1)
    legacy = official_basis(seed, 1, (1, numel), layout=layout, dtype=torch.bfloat16, uniform_rule="legacy")
    legacy = legacy.view(-1)
    single = official_basis(seed, 1, (1, numel), layout=layout, uniform_rule="legacy").view(-1)
    assert torch.equal(single, official_basis(seed, 1, (1, numel), layout=layout).view(-1))
    differ = (current != legacy).nonzero().view(-1)
    # Half a bfloat16 step below 1 (2^-9) of (-1, 1): about 0.1% of the entries.
    assert 0.0007 < differ.numel() / numel < 0.0013
    assert torch.all(legacy[differ] == 1) and torch.all(current[differ] == -1)
    assert current.max() < 1 and legacy.max() == 1

    floats = cuda_uniform(seed, 0, numel, numel, layout).numpy()
    for index in (int(differ[0]), int(differ[-1]), 12345):
        expected = oracle_uniform(seed, index, layout.total_threads(numel))
        assert floats[index] == expected
        rounded = bfloat16_round(np.array([expected]))[0]
        assert float(legacy[index]) == rounded
        assert float(current[index]) == (-1.0 if rounded == 1 else rounded)


def test_uniform_rule_is_checked_before_any_work():
    with pytest.raises(ValueError, match=r"uniform_rule must be one of \('current', 'legacy'\), got 'old'"):
        official_basis(1, 2, (3, 4), layout="A100", uniform_rule="old")
    with pytest.raises(ValueError, match=r"uniform_rule='legacy' .* needs a CudaLayout"):
        official_factors(llama_state(), layout="generator", uniform_rule="legacy")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seed", torch.zeros(0, dtype=torch.int64), r"lora_A\.seed must hold one non-negative integer"),
        ("seed", torch.tensor([1.5]), r"lora_A\.seed must hold one non-negative integer"),
        ("coefficients", torch.zeros(0), r"lora_A\.coefficients must be a non-empty 1-D float tensor"),
        ("weight", torch.zeros(3), r"lora_A\.weight must be a 2-D float matrix"),
    ],
)
def test_malformed_fields_are_refused_before_any_basis_is_drawn(field, value, message):
    state = official_gpt2_state(GPT2_ADAPTERS, blocks=2)
    state[f"transformer.h.1.attn.nola_value.lora_A.{field}"] = value
    with pytest.raises(ValueError, match=message):
        official_factors(state, layout="generator")
