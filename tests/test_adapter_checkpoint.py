"""save_adapter / load_adapter: bit-exact round trip, file size, atomic writes, clear mismatches."""

import copy
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from adapter_models import TinyViT, coefficients, randomize_coefficients
from safetensors.torch import save_file

import nola_kernels
from nola_kernels import (
    AdapterMismatchError,
    adapted_modules,
    export_peft_lora,
    inject,
    load_adapter,
    save_adapter,
    unload,
)
from nola_kernels.adapters import AdapterFileError, atomic
from nola_kernels.adapters.checkpoint_file import encode_checkpoint, read_adapter

TARGETS = ["query", "value", "mlp.0", "mlp.2"]
K, L = 24, 10


def trained_model(seed=3, **options):
    model = TinyViT().eval()
    inject(model, TARGETS, rank=2, num_basis=K, num_basis_b=L, seed=seed, **options)
    randomize_coefficients(model)
    return model


def test_round_trip_into_a_fresh_model_is_bit_exact(tmp_path):
    model = trained_model(lora_alpha=4.0, distribution="rademacher")
    path = tmp_path / "adapter.safetensors"
    save_adapter(model, path)
    fresh = unload(copy.deepcopy(model))  # the same base weights, no adapter
    assert load_adapter(fresh, path) == list(adapted_modules(model))
    saved, loaded = coefficients(model), coefficients(fresh)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    x = torch.randn(2, 5, 12)
    assert torch.equal(fresh(x), model(x))
    assert adapted_modules(fresh)["blocks.1.value"].adapters["default"].config == (
        adapted_modules(model)["blocks.1.value"].adapters["default"].config
    )


def _train(model, steps=3):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, labels = torch.randn(4, 5, 12), torch.tensor([0, 1, 2, 1])
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()


@pytest.mark.parametrize("distribution", ["uniform16_philox7", "rademacher_philox7"])
def test_a_v1_1_distribution_trains_saves_loads_and_exports(tmp_path, distribution):
    peft = pytest.importorskip("peft")
    model = TinyViT()
    inject(model, TARGETS, rank=2, num_basis=K, num_basis_b=L, seed=3, distribution=distribution)
    start = coefficients(model)
    _train(model)
    trained = coefficients(model)
    assert all(not torch.equal(trained[k], start[k]) for k in trained)  # alpha and beta both moved
    model.eval()
    path = tmp_path / "adapter.safetensors"
    save_adapter(model, path)
    header, _ = read_adapter(path)
    assert header["spec_version"] == "NOLA-Philox v1.1" == nola_kernels.SPEC_VERSION
    assert header["config"]["distribution"] == distribution

    fresh = unload(copy.deepcopy(model))
    load_adapter(fresh, path)
    loaded = coefficients(fresh)
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        ours = model(x)
        assert torch.equal(fresh(x), ours)
        export_peft_lora(model, tmp_path / "lora")
        lora = peft.PeftModel.from_pretrained(unload(copy.deepcopy(model)), tmp_path / "lora").eval()
        torch.testing.assert_close(lora(x), ours, rtol=1e-5, atol=1e-5)


def test_round_trip_into_existing_adapter_and_a_second_name(tmp_path):
    model = trained_model()
    path = tmp_path / "adapter.safetensors"
    save_adapter(model, path)
    other = trained_model()  # same layers, other coefficients
    load_adapter(other, path)
    saved, loaded = coefficients(model), coefficients(other)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    load_adapter(other, path, adapter_name="copy")
    copied = coefficients(other, "copy")
    assert all(torch.equal(saved[k], copied[k]) for k in saved)


def test_file_holds_only_the_coefficients(tmp_path):
    model = trained_model()
    path = tmp_path / "adapter.safetensors"
    size = save_adapter(model, path)
    modules = len(adapted_modules(model))
    assert size == path.stat().st_size
    data = path.read_bytes()
    (header_bytes,) = struct.unpack("<Q", data[:8])
    assert size - 8 - header_bytes == 4 * (K + L) * modules  # the payload: float32 alpha and beta
    header = json.loads(data[8 : 8 + header_bytes])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}
    assert header_bytes < 400 + 350 * modules  # the config, then per module its record and 2 entries
    config, tensors = read_adapter(path)
    # A v1 distribution is recorded as v1: every release reads it.
    assert config["spec_version"] == "NOLA-Philox v1" and config["config"]["seed"] == 3
    assert len(tensors) == 2 * modules


def test_a_crash_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "adapter.safetensors"
    save_adapter(trained_model(), path)
    old = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt("simulated crash before the data reaches the disk")

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(trained_model(seed=4), path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["adapter.safetensors"]  # no temporary file left behind


def rewrite_signed(path, header, tensors):
    """Write a changed checkpoint with a valid digest, as a crafted (not corrupted) file would be."""
    header = {key: value for key, value in header.items() if key != "digest"}
    path.write_bytes(encode_checkpoint(header, tensors))


def test_every_mismatch_is_named_and_nothing_is_loaded(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_adapter(trained_model(), path)
    header, tensors = read_adapter(path)
    header["modules"]["blocks.9.query"] = header["modules"].pop("blocks.1.query")
    header["modules"]["blocks.0.value"]["out_features"] = 7
    tensors["blocks.9.query.alpha"], tensors["blocks.9.query.beta"] = (
        tensors.pop("blocks.1.query.alpha"),
        tensors.pop("blocks.1.query.beta"),
    )
    rewrite_signed(path, header, tensors)

    target = trained_model(seed=3)
    target_coefficients = coefficients(target)
    with pytest.raises(AdapterMismatchError) as error:
        load_adapter(target, path)
    message = str(error.value)
    for expected in (
        "module blocks.9.query: in the checkpoint, not adapted in the model",
        "module blocks.1.query: adapted in the model, not in the checkpoint",
        "module blocks.0.value: out_features 7 in the checkpoint, 24 in the model",
    ):
        assert expected in message
    assert all(torch.equal(v, coefficients(target)[k]) for k, v in target_coefficients.items())

    fresh = TinyViT()
    with pytest.raises(AdapterMismatchError):
        load_adapter(fresh, path)
    assert not adapted_modules(fresh)  # nothing was injected


def test_every_problem_of_a_file_is_named(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_adapter(trained_model(), path)
    header, tensors = read_adapter(path)
    header["spec_version"] = "NOLA-Philox v0"
    tensors["blocks.0.query.beta"] = tensors["blocks.0.query.beta"][:-1]
    rewrite_signed(path, header, tensors)
    with pytest.raises(AdapterFileError) as error:
        load_adapter(TinyViT(), path)
    message = str(error.value)
    assert str(path) in message
    assert "spec_version 'NOLA-Philox v0'" in message
    assert "tensor blocks.0.query.beta is (9,) torch.float32, expected (10,) float32" in message


def test_other_settings_are_mismatches(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_adapter(trained_model(), path)
    other = TinyViT()
    inject(other, TARGETS, rank=3, num_basis=K, num_basis_b=L, seed=4)
    with pytest.raises(AdapterMismatchError) as error:
        load_adapter(other, path)
    assert "module blocks.0.query: rank 2 in the checkpoint, 3 in the model" in str(error.value)
    assert "seed_a" in str(error.value)


def test_not_an_adapter_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(AdapterMismatchError, match="not a nola_kernels adapter"):
        load_adapter(TinyViT(), path)


def test_unreadable_config_is_a_mismatch(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_adapter(trained_model(), path)
    header, tensors = read_adapter(path)
    header["config"]["rank"] = 0
    rewrite_signed(path, header, tensors)
    with pytest.raises(AdapterFileError, match="config: rank must be"):
        load_adapter(TinyViT(), path)


def test_the_library_imports_without_safetensors():
    # Machines that run only the kernels (a bare GPU image) may lack it: it is imported when used.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'safetensors': raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import nola_kernels\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
