"""NOLALinear: its output against a float64 reference, its start at zero, what trains."""

import math

import pytest
import torch
from adapter_models import randomize_coefficients
from torch import nn

from nola_kernels import NOLALinear, nola_basis
from nola_kernels.basis import DISTRIBUTIONS


def reference_output(layer, x):
    """base(x) + scaling * (x A^T) B^T with the whole basis materialized, in float64."""
    adapter = layer.adapters[layer.active_adapter]
    c = adapter.config
    basis_a = nola_basis(
        adapter.seed_a, c.k, (c.rank, layer.in_features), distribution=c.distribution
    ).double()
    basis_b = nola_basis(
        adapter.seed_b, c.l, (layer.out_features, c.rank), distribution=c.distribution
    ).double()
    a0 = nola_basis(adapter.seed_a, 1, (c.rank, layer.in_features), stream=1)[0].double() / math.sqrt(
        layer.in_features
    )
    a = a0 + torch.einsum("k,krc->rc", adapter.alpha.double(), basis_a) / math.sqrt(c.k)
    b = torch.einsum("k,krc->rc", adapter.beta.double(), basis_b) / math.sqrt(c.l)
    base = nn.functional.linear(x.double(), layer.base_layer.weight.double(), layer.base_layer.bias.double())
    return base + c.scaling * (x.double() @ a.T) @ b.T


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_output_matches_float64_reference(backend, distribution):
    layer = NOLALinear(
        nn.Linear(20, 12),
        rank=3,
        num_basis=10,
        num_basis_b=7,
        lora_alpha=6.0,
        seed_a=11,
        seed_b=2**62 + 5,
        distribution=distribution,
        backend=backend,
    )
    randomize_coefficients(layer)
    x = torch.randn(4, 5, 20)
    expected = reference_output(layer, x)
    out = layer(x)
    assert out.shape == (4, 5, 12) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_starts_as_the_base_layer_and_beta_learns_first():
    base = nn.Linear(16, 8)
    layer = NOLALinear(base, rank=4, num_basis=32, seed_a=1, seed_b=2)
    x = torch.randn(6, 16)
    assert torch.equal(layer(x), base(x))
    layer(x).square().sum().backward()
    adapter = layer.adapters["default"]
    assert adapter.alpha.grad.abs().max() == 0  # B = 0 blocks alpha's gradient at the start
    assert adapter.beta.grad.abs().max() > 0
    a0 = adapter.offset(torch.device("cpu"))
    assert a0.abs().max() < 1 / math.sqrt(16) and a0.std() > 0.5 / math.sqrt(3 * 16)


def test_coefficients_are_float32_zeros_and_a0_is_not_saved():
    layer = NOLALinear(nn.Linear(8, 8), rank=2, num_basis=5, seed_a=3, seed_b=4)
    adapter = layer.adapters["default"]
    assert adapter.alpha.dtype == torch.float32 and adapter.alpha.shape == (5,)
    assert adapter.beta.shape == (5,) and not adapter.alpha.any()
    assert list(layer.state_dict()) == [
        "base_layer.weight",
        "base_layer.bias",
        "adapters.default.alpha",
        "adapters.default.beta",
    ]


def test_dropout_applies_to_the_adapter_input_only():
    base = nn.Linear(16, 8)
    layer = NOLALinear(base, rank=2, num_basis=4, seed_a=1, seed_b=2, dropout=0.5).train()
    randomize_coefficients(layer)
    x = torch.randn(64, 16)
    train_out = layer(x)
    eval_out = layer.eval()(x)
    assert not torch.allclose(train_out, eval_out)
    assert not torch.equal(eval_out, base(x))


def test_half_precision_model_runs():
    layer = NOLALinear(nn.Linear(16, 8), rank=2, num_basis=4, seed_a=1, seed_b=2).to(torch.bfloat16)
    randomize_coefficients(layer)
    out = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert layer.adapters["default"].offset(torch.device("cpu")).dtype == torch.float32  # a0 stays exact


def test_rejects_a_module_without_feature_sizes():
    with pytest.raises(TypeError, match="in_features/out_features"):
        NOLALinear(nn.ReLU(), rank=2, num_basis=4, seed_a=1, seed_b=2)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="rank"):
        NOLALinear(nn.Linear(4, 4), rank=0, num_basis=4, seed_a=1, seed_b=2)
    with pytest.raises(ValueError, match="dropout"):
        NOLALinear(nn.Linear(4, 4), rank=1, num_basis=4, seed_a=1, seed_b=2, dropout=1.0)
