"""The factor cache (nola_kernels/adapters/factor_cache.py): where no gradient is needed an adapted
layer mixes its factors once; later forwards launch no generation op, every change of the
coefficients is seen at once, outputs are the composed path's, and compiled models still run."""

import pytest
import torch
from adapter_models import TinyViT, randomize_coefficients
from numerics import rel_err, rounding_bound
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import nola_kernels
from nola_kernels import adapted_modules, inject, set_active_adapter, set_factor_cache
from nola_kernels.routing import lowrank_path

TARGETS = ["query", "value", "mlp.0"]


class OpCounter(TorchDispatchMode):
    """Counts the nola_kernels ops a block launches (mix, project, lowrank_forward, ...)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "nola_kernels":
            self.calls.append(func.name())
        return func(*args, **(kwargs or {}))


def launched(model, x):
    with OpCounter() as counter:
        out = model(x)
    return out, counter.calls


@pytest.fixture
def model():
    net = TinyViT().eval()
    inject(net, TARGETS, rank=4, num_basis=32, num_basis_b=24, seed=5)
    randomize_coefficients(net)
    return net


@pytest.fixture
def cache_off():
    previous = set_factor_cache(False)
    yield
    set_factor_cache(*previous)


def uncached(model, x):
    previous = set_factor_cache(False)
    try:
        with torch.no_grad(), lowrank_path("composed"):
            return model(x)
    finally:
        set_factor_cache(*previous)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen"])
def test_a_second_forward_launches_no_generation_op(model, mode):
    x = torch.randn(3, 5, 12)
    if mode == "frozen":
        model.requires_grad_(False)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "frozen": torch.enable_grad}[
        mode
    ]
    with context():
        first, calls = launched(model, x)
        assert calls.count("nola_kernels::mix") == 2 * len(adapted_modules(model))
        second, calls = launched(model, x)
    assert calls == []
    assert torch.equal(first, second)


def test_outputs_are_the_composed_paths_bit_for_bit_and_near_the_fused(model):
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        cached = model(x)
        cached_again = model(x)
        with lowrank_path("fused"):
            previous = set_factor_cache(False)
            fused = model(x)
            set_factor_cache(*previous)
    assert torch.equal(cached, uncached(model, x))
    assert torch.equal(cached, cached_again)
    assert rel_err(cached, fused.double()) < 2 * rounding_bound(torch.float32, 24, 32, 4, 48, 24)


def test_gradients_still_flow_where_the_coefficients_need_them(model):
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        model(x)  # fills the cache
    _, calls = launched(model, x)
    assert "nola_kernels::mix" in calls or "nola_kernels::lowrank_forward" in calls
    model(x).square().sum().backward()
    assert all(layer.adapters["default"].alpha.grad is not None for layer in adapted_modules(model).values())


def test_an_inference_tensor_entry_is_not_used_where_autograd_records(model):
    x = torch.randn(3, 5, 12, requires_grad=True)
    model.requires_grad_(False)
    with torch.inference_mode():
        model(x.detach())
    model(x).square().sum().backward()  # saving an inference tensor for backward would raise
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_an_optimizer_step_is_seen_at_once(model):
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        before = model(x)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(x).square().sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = model(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, uncached(model, x))


def test_an_in_place_change_and_a_replaced_tensor_are_seen_at_once(model):
    x = torch.randn(3, 5, 12)
    layer = adapted_modules(model)["blocks.0.query"]
    with torch.no_grad():
        model(x)
        layer.adapters["default"].beta.mul_(-2.0)
        assert torch.equal(model(x), uncached(model, x))
        layer.adapters["default"].alpha.data = torch.randn(32)
        assert torch.equal(model(x), uncached(model, x))


def test_a_write_through_data_is_seen_after_a_train_eval_switch(model):
    # .data has a version counter of its own: the cache sees such a training step only through
    # the mode switches around it, as a training loop makes them.
    x = torch.randn(3, 5, 12)
    beta = adapted_modules(model)["blocks.0.query"].adapters["default"].beta
    with torch.no_grad():
        before = model(x)
        model.train()
        beta.data.add_(torch.randn_like(beta))
        model.eval()
        after = model(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, uncached(model, x))


def test_load_adapter_is_seen_at_once(model, tmp_path):
    x = torch.randn(3, 5, 12)
    other = TinyViT().eval()
    other.load_state_dict(model.state_dict(), strict=False)
    inject(other, TARGETS, rank=4, num_basis=32, num_basis_b=24, seed=5)
    randomize_coefficients(other)
    nola_kernels.save_adapter(other, tmp_path / "other.safetensors")
    with torch.no_grad():
        before = model(x)
        nola_kernels.load_adapter(model, tmp_path / "other.safetensors")
        after = model(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, uncached(model, x))


def test_switching_merging_and_deleting_drop_the_entries(model):
    x = torch.randn(3, 5, 12)
    inject(model, TARGETS, rank=2, num_basis=16, seed=9, adapter_name="other")
    randomize_coefficients(model, "other")
    layers = adapted_modules(model).values()

    def cached_names():
        return {name for layer in layers for name in layer.factor_cache.entries}

    with torch.no_grad():
        model(x)
        assert cached_names() == {"other"}
        set_active_adapter(model, "default")
        assert cached_names() == set()
        assert torch.equal(model(x), uncached(model, x))
        nola_kernels.merge_adapter(model)
        assert cached_names() == set()
        merged = model(x)
        nola_kernels.unmerge_adapter(model)
        assert rel_err(merged, uncached(model, x).double()) < 1e-5
        model(x)
        nola_kernels.delete_adapter(model, "default")
        assert cached_names() == set()
        assert torch.equal(model(x), uncached(model, x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_dtype_change_remixes_in_the_new_compute_dtype(model, dtype):
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        model(x)
        model.to(dtype)
        out, calls = launched(model, x.to(dtype))
        layer = adapted_modules(model)["blocks.0.query"]
        entry = layer.factor_cache.entries["default"]
    assert calls.count("nola_kernels::mix") == 2 * len(adapted_modules(model))
    assert out.dtype == dtype and entry.a.dtype == dtype and entry.b.dtype == dtype
    assert torch.equal(out, uncached(model, x.to(dtype)))


def test_the_cache_is_lora_sized(model):
    with torch.no_grad():
        model(torch.randn(2, 3, 12))
    for layer in adapted_modules(model).values():
        rank = layer.adapters["default"].config.rank
        assert layer.factor_cache.nbytes() == 4 * rank * (layer.in_features + layer.out_features)


def test_turned_off_every_forward_generates(model, cache_off):
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        launched(model, x)
        _, calls = launched(model, x)
    assert calls
    assert all(not layer.factor_cache.entries for layer in adapted_modules(model).values())


def test_turning_it_off_drops_every_entry_and_the_bound_trims(model):
    inject(model, TARGETS, rank=2, num_basis=16, seed=9, adapter_name="other")
    layer = adapted_modules(model)["blocks.0.query"]
    x = torch.randn(3, 24)
    with torch.no_grad():
        for name in ("default", "other"):
            layer.set_active(name)
            layer.factor_cache.factors([name], [layer.adapters[name]], torch.float32, layer.backend)
    assert list(layer.factor_cache.entries) == ["other"]  # set_active dropped "default"
    layer.factor_cache.factors(
        ["default", "other"], list(layer.adapters.values()), torch.float32, layer.backend
    )
    previous = set_factor_cache(True, max_adapters=1)
    try:
        assert list(layer.factor_cache.entries) == ["other"]
        set_factor_cache(False)
        assert not layer.factor_cache.entries
    finally:
        set_factor_cache(*previous)
    assert previous == (True, 64)
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x))


def test_set_factor_cache_refuses_bad_settings():
    with pytest.raises(TypeError, match="enabled"):
        set_factor_cache("no")
    with pytest.raises(ValueError, match="max_adapters"):
        set_factor_cache(True, max_adapters=0)
    assert nola_kernels.adapters.factor_cache.factor_cache_settings() == (True, 64)


def test_adapters_of_one_family_share_a0():
    base = nn.Linear(12, 8)
    layer = nola_kernels.NOLALinear(base, seed_a=3, seed_b=4, rank=2, num_basis=8)
    twin = nola_kernels.NOLALinear(nn.Linear(12, 8), seed_a=3, seed_b=5, rank=2, num_basis=8)
    assert layer.adapters["default"].offset(torch.device("cpu")) is twin.adapters["default"].offset(
        torch.device("cpu")
    )


def test_a_compiled_eval_model_runs_and_matches(model):
    x = torch.randn(3, 5, 12)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        eager = model(x)
        assert torch.allclose(compiled(x), eager, rtol=1e-5, atol=1e-6)
        assert torch.allclose(compiled(x), eager, rtol=1e-5, atol=1e-6)


def test_a_copied_layer_starts_with_an_empty_cache(model):
    import copy

    with torch.no_grad():
        model(torch.randn(2, 3, 12))
    copied = copy.deepcopy(model)
    assert all(not layer.factor_cache.entries for layer in adapted_modules(copied).values())
    with torch.no_grad():
        x = torch.randn(2, 3, 12)
        assert torch.equal(copied(x), model(x))
