"""merge / unmerge: scaling * B A folded into the base weight, exact to float32 rounding."""

import math

import pytest
import torch
from adapter_models import TinyViT, randomize_coefficients, tiny_gpt2

from nola_kernels import (
    NOLALinear,
    NotMergeableError,
    adapted_modules,
    inject,
    merge_adapter,
    merge_and_unload,
    nola_basis,
    unmerge_adapter,
)


def reference_delta(layer):
    """scaling * B A in float64, from the materialized basis."""
    adapter = layer.adapters["default"]
    c = adapter.config
    n_in, n_out = layer.in_features, layer.out_features
    basis_a = nola_basis(adapter.seed_a, c.k, (c.rank, n_in)).double()
    basis_b = nola_basis(adapter.seed_b, c.l, (n_out, c.rank)).double()
    a = adapter.offset(torch.device("cpu")).double() + torch.einsum("k,krc->rc", adapter.alpha.double(), basis_a) / math.sqrt(c.k)
    b = torch.einsum("k,krc->rc", adapter.beta.double(), basis_b) / math.sqrt(c.l)
    return c.scaling * b @ a


def test_merged_weight_is_the_float64_update_rounded_once():
    layer = NOLALinear(torch.nn.Linear(40, 24), rank=4, num_basis=32, lora_alpha=8.0, seed_a=5, seed_b=6)
    randomize_coefficients(layer)
    weight = layer.base_layer.weight.detach().clone()
    expected = (weight.double() + reference_delta(layer)).float()
    x = torch.randn(7, 40)
    unmerged_out = layer(x)
    layer.merge()
    assert layer.merged_adapter == "default"
    ulp = torch.finfo(torch.float32).eps * expected.abs().max()
    assert (layer.base_layer.weight.detach() - expected).abs().max() <= 4 * ulp
    torch.testing.assert_close(layer(x), unmerged_out, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    assert (layer.base_layer.weight.detach() - weight).abs().max() <= 4 * ulp
    torch.testing.assert_close(layer(x), unmerged_out, rtol=1e-5, atol=1e-5)


def test_merge_and_unload_gives_a_plain_model_with_the_same_outputs():
    model = TinyViT().eval()
    inject(model, ["query", "value", "mlp.0"], rank=2, num_basis=16, seed=1)
    randomize_coefficients(model)
    x = torch.randn(3, 5, 12)
    adapted_out = model(x)
    merge_adapter(model)
    torch.testing.assert_close(model(x), adapted_out, rtol=1e-5, atol=1e-5)
    unmerge_adapter(model)
    merge_and_unload(model)
    assert not adapted_modules(model)
    assert type(model.get_submodule("blocks.0.query")) is torch.nn.Linear
    torch.testing.assert_close(model(x), adapted_out, rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_merge():
    model = tiny_gpt2()
    inject(model, ["c_attn", "c_fc"], rank=2, num_basis=16, seed=1)
    randomize_coefficients(model)
    tokens = torch.randint(0, 64, (2, 12))
    adapted = model(tokens).logits
    layer = adapted_modules(model)["transformer.h.0.attn.c_attn"]
    expected = (layer.base_layer.weight.detach().double() + reference_delta(layer).T).float()
    merge_and_unload(model)
    weight = model.get_submodule("transformer.h.0.attn.c_attn").weight.detach()
    assert (weight - expected).abs().max() <= 4 * torch.finfo(torch.float32).eps * expected.abs().max()
    torch.testing.assert_close(model(tokens).logits, adapted, rtol=1e-4, atol=1e-4)


class Quantized(torch.nn.Module):
    """Like a bitsandbytes Linear4bit: feature sizes, but a packed integer weight."""

    def __init__(self):
        super().__init__()
        self.in_features, self.out_features = 8, 4
        self.register_buffer("weight", torch.randint(0, 255, (16, 1), dtype=torch.uint8))

    def forward(self, x):
        return x[..., :4]


def test_quantized_base_runs_but_refuses_to_merge():
    layer = NOLALinear(Quantized(), rank=2, num_basis=4, seed_a=1, seed_b=2)
    randomize_coefficients(layer)
    assert layer(torch.randn(3, 8)).shape == (3, 4)
    with pytest.raises(NotMergeableError, match="quantized"):
        layer.merge()
    assert layer.merged_adapter is None


def test_merge_state_errors():
    layer = NOLALinear(torch.nn.Linear(8, 8), rank=2, num_basis=4, seed_a=1, seed_b=2)
    with pytest.raises(RuntimeError, match="no adapter is merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    with pytest.raises(RuntimeError, match="unmerge it before switching"):
        layer.set_active(None)
