"""The adapter bank (nola_kernels/adapters/bank.py): many checkpoints loaded into one model, each
costing its coefficients; every file checked before the model changes; the factor cache bounded."""

import pytest
import torch
from adapter_models import TinyViT, coefficients, randomize_coefficients, snapshot

import nola_kernels
from nola_kernels import (
    AdapterFileError,
    AdapterMismatchError,
    adapted_modules,
    inject,
    load_adapters,
    row_adapters,
    set_factor_cache,
)

TARGETS = ["query", "value"]
SETTINGS = dict(rank=2, num_basis=16, num_basis_b=12, seed=11)


def base_model():
    torch.manual_seed(123)  # the same base weights each time
    return TinyViT().eval()


def saved_adapters(tmp_path, count, **settings):
    """{name: path} of `count` adapters trained (randomized) on one TinyViT, and the model."""
    model = base_model()
    paths = {}
    for i in range(count):
        name = f"task{i}"
        inject(model, TARGETS, adapter_name=name, **(settings or SETTINGS))
        randomize_coefficients(model, name)
        paths[name] = tmp_path / f"{name}.safetensors"
        nola_kernels.save_adapter(model, paths[name], name)
    return paths, model


def test_a_bank_serves_each_adapter_as_saved(tmp_path):
    paths, trained = saved_adapters(tmp_path, 5)
    served = base_model()
    assert load_adapters(served, paths) == list(paths)
    for name in paths:
        assert all(
            torch.equal(v, coefficients(trained, name)[k]) for k, v in coefficients(served, name).items()
        )
    assert all(layer.active_adapter is None for layer in adapted_modules(served).values())
    assert not any(
        p.requires_grad for layer in adapted_modules(served).values() for p in layer.adapters.parameters()
    )
    rows = ["task3", None, "task0", "task3", "task4"]
    x = torch.randn(len(rows), 3, 12)
    with torch.no_grad():
        with row_adapters(served, rows):
            out = served(x)
        for i, name in enumerate(rows):
            nola_kernels.set_active_adapter(trained, name)
            assert torch.allclose(out[i : i + 1], trained(x[i : i + 1]), rtol=1e-5, atol=1e-6)


def test_an_adapter_costs_its_coefficients_and_shares_a0(tmp_path):
    paths, _ = saved_adapters(tmp_path, 4)
    model = TinyViT().eval()
    load_adapters(model, paths)
    for layer in adapted_modules(model).values():
        adapters = list(layer.adapters.values())
        assert (
            sum(p.numel() * p.element_size() for a in adapters for p in a.parameters()) == 4 * (16 + 12) * 4
        )
        offsets = {id(a.offset(torch.device("cpu"))) for a in adapters}
        assert len(offsets) == 1


def test_the_active_adapter_stays_and_names_already_there_are_refused(tmp_path):
    paths, _ = saved_adapters(tmp_path, 3)
    model = TinyViT().eval()
    inject(model, TARGETS, adapter_name="mine", rank=2, num_basis=8, seed=1)
    load_adapters(model, {"task0": paths["task0"], "task1": paths["task1"]})
    assert all(layer.active_adapter == "mine" for layer in adapted_modules(model).values())
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"paths.*\['task1'\]"):
        load_adapters(model, {"task2": paths["task2"], "task1": paths["task1"]})
    assert snapshot(model) == before


def test_a_corrupted_or_unfitting_file_is_refused_before_any_change(tmp_path):
    paths, _ = saved_adapters(tmp_path, 3)
    data = bytearray(paths["task2"].read_bytes())
    data[-3] ^= 0x40  # a bit of a coefficient
    corrupted = tmp_path / "corrupted.safetensors"
    corrupted.write_bytes(bytes(data))
    model = TinyViT().eval()
    before = snapshot(model)
    with pytest.raises(AdapterFileError, match="corrupted"):
        load_adapters(model, {"task0": paths["task0"], "bad": corrupted})
    narrower = TinyViT(width=16).eval()
    before = snapshot(narrower)
    with pytest.raises(AdapterMismatchError, match="in_features 24 in the checkpoint, 16 in the model"):
        load_adapters(narrower, {"task0": paths["task0"]})
    assert snapshot(narrower) == before
    inject(model, TARGETS, adapter_name="mine", rank=2, num_basis=8, seed=1)
    nola_kernels.merge_adapter(model)
    before = snapshot(model)
    with pytest.raises(AdapterMismatchError, match="merged"):
        load_adapters(model, {"task0": paths["task0"], "task1": paths["task1"]})
    assert snapshot(model) == before


def test_refuses_bad_arguments():
    model = TinyViT()
    for paths, error, match in [
        ({}, TypeError, "paths"),
        (["a.safetensors"], TypeError, "paths"),
        ({"a.b": "x"}, ValueError, "adapter name"),
        ({"a": 3}, TypeError, r"paths\['a'\]"),
    ]:
        with pytest.raises(error, match=match):
            load_adapters(model, paths)


def test_the_factor_cache_keeps_at_most_its_bound(tmp_path):
    paths, _ = saved_adapters(tmp_path, 5)
    model = TinyViT().eval()
    load_adapters(model, paths)
    previous = set_factor_cache(True, max_adapters=2)
    try:
        x = torch.randn(5, 3, 12)
        with torch.no_grad(), row_adapters(model, list(paths)):
            expected = model(x)
            for layer in adapted_modules(model).values():
                assert list(layer.factor_cache.entries) == ["task3", "task4"]
        with torch.no_grad(), row_adapters(model, list(paths)):
            assert torch.equal(model(x), expected)
    finally:
        set_factor_cache(*previous)


def test_a_checkpoint_with_modules_trained_whole_is_refused_before_any_change(tmp_path):
    model = base_model()
    inject(model, TARGETS, adapter_name="head", modules_to_save=["head"], **SETTINGS)
    nola_kernels.save_adapter(model, tmp_path / "head.safetensors", "head")
    paths, _ = saved_adapters(tmp_path, 2)
    served = base_model()
    before = snapshot(served)
    with pytest.raises(ValueError, match=r"paths\['head'\]: .*modules_to_save=\['head'\].*load_adapter"):
        load_adapters(served, {**paths, "head": tmp_path / "head.safetensors"})
    assert snapshot(served) == before
