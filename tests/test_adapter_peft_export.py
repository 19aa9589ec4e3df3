"""Export to PEFT LoRA: PeftModel, loading the exported files unchanged, computes what we compute."""

import json

import pytest
import torch
from adapter_models import TinyViT, randomize_coefficients, tiny_gpt2

from nola_kernels import export_peft_lora, inject, unload

peft = pytest.importorskip("peft")


def test_peft_model_on_gpt2_matches_ours(tmp_path):
    model = tiny_gpt2()
    inject(model, ["c_attn", "mlp.c_proj"], rank=4, num_basis=32, num_basis_b=16, lora_alpha=8.0, seed=9)
    randomize_coefficients(model)
    tokens = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        ours = model(tokens).logits
    export_peft_lora(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["fan_in_fan_out"] is True

    base = unload(model)
    with torch.no_grad():
        plain = base(tokens).logits
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        theirs = peft_model(tokens).logits
    assert not torch.allclose(plain, ours, atol=1e-3)  # the adapter changes the outputs
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_peft_model_on_linear_layers_matches_ours(tmp_path):
    model = TinyViT().eval()
    inject(model, ["query", "value"], rank=2, num_basis=16, seed=1)
    randomize_coefficients(model)
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        ours = model(x)
    export_peft_lora(model, tmp_path)
    peft_model = peft.PeftModel.from_pretrained(unload(model), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), ours, rtol=1e-5, atol=1e-5)
