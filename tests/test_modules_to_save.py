"""inject(modules_to_save=...): PEFT's option for modules trained whole beside the adapter (a new
classifier head). The model's module stays as it was; each adapter trains its own copy, which
save_adapter writes and load_adapter restores; refused calls change nothing."""

import re

import pytest
import torch
from adapter_models import TinyViT, randomize_coefficients, snapshot
from safetensors.torch import load_file

import nola_kernels
from nola_kernels import AdapterMismatchError, adapted_modules, inject, load_adapter, save_adapter
from nola_kernels.adapters.copied import CopiedModule, copied_modules

SETTINGS = dict(rank=2, num_basis=16, seed=5)
TARGETS = ["query", "value"]


def vit(seed=0, **sizes):
    torch.manual_seed(seed)
    return TinyViT(**sizes).eval()


def inputs(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 5, 12, generator=generator), torch.randint(0, 3, (6,), generator=generator)


def train(model, steps=3):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = inputs()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def trained_model(**settings):
    model = vit()
    inject(model, TARGETS, modules_to_save=["head"], **SETTINGS, **settings)
    train(model)
    return model


def test_the_head_trains_as_a_copy_and_the_original_stays():
    model = vit()
    original = model.head
    before = {k: v.clone() for k, v in original.state_dict().items()}
    inject(model, TARGETS, modules_to_save=["head"], **SETTINGS)
    assert isinstance(model.head, CopiedModule) and model.head.original_module is original
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    coefficient_names = {n for n in trainable if ".adapters." in n}
    assert trainable - coefficient_names == {"head.modules_to_save.default.weight", "head.modules_to_save.default.bias"}
    assert len(coefficient_names) == 2 * 2 * len(TARGETS)
    train(model)
    assert all(torch.equal(original.state_dict()[k], v) for k, v in before.items())
    assert not torch.equal(model.head.modules_to_save["default"].weight, original.weight)
    x, _ = inputs(seed=2)
    nola_kernels.set_active_adapter(model, None)  # the base model: original head, no adapter
    assert torch.equal(model(x), vit()(x))


@pytest.mark.parametrize("to_folder", [False, True], ids=["file", "folder"])
def test_save_and_load_round_trip_bit_exact(tmp_path, to_folder):
    model = trained_model()
    randomize_coefficients(model)
    path = tmp_path if to_folder else tmp_path / "adapter.safetensors"
    save_adapter(model, path)
    saved = load_file(path / "adapter_model.safetensors" if to_folder else path)
    prefix = "base_model.model." if to_folder else ""
    assert {f"{prefix}head.weight", f"{prefix}head.bias"} <= saved.keys()
    assert torch.equal(saved[f"{prefix}head.weight"], model.head.modules_to_save["default"].weight)
    x, _ = inputs(seed=2)
    if to_folder:
        peft = pytest.importorskip("peft")
        import nola_kernels.peft  # noqa: F401  (registers NOLA with PEFT)

        loaded = peft.PeftModel.from_pretrained(vit(), path)
        assert torch.equal(loaded(x), model(x))
        return
    fresh = vit()
    assert load_adapter(fresh, path) == list(adapted_modules(model))
    assert isinstance(fresh.head, CopiedModule)
    assert torch.equal(fresh(x), model(x))
    again = trained_model()  # a model that has the adapter and its copy: loaded in place
    load_adapter(again, path)
    assert torch.equal(again(x), model(x))


def test_each_adapter_trains_its_own_copy_and_delete_or_unload_restores_the_head():
    model = vit()
    original = model.head
    inject(model, ["query"], modules_to_save=["head"], **SETTINGS)
    train(model)
    inject(model, ["value"], modules_to_save=["head"], adapter_name="other", **SETTINGS)
    assert list(model.head.modules_to_save) == ["default", "other"]
    assert model.head.active_adapter == "other"
    assert torch.equal(model.head.modules_to_save["other"].weight, original.weight)  # a copy of the original
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and ".adapters." not in n}
    assert trainable == {"head.modules_to_save.other.weight", "head.modules_to_save.other.bias"}
    nola_kernels.delete_adapter(model, "other")
    assert list(model.head.modules_to_save) == ["default"] and model.head.active_adapter is None
    nola_kernels.unload(model)
    assert model.head is original and not copied_modules(model)


def test_merge_and_unload_keeps_the_trained_copy():
    model = trained_model()
    x, _ = inputs(seed=2)
    adapted = model(x)
    trained_head = model.head.modules_to_save["default"]
    nola_kernels.merge_and_unload(model)
    assert model.head is trained_head and not copied_modules(model) and not adapted_modules(model)
    assert (model(x) - adapted).abs().max() <= 1e-5 * adapted.abs().max()


@pytest.mark.parametrize(
    ("modules_to_save", "error", "message"),
    [
        (["classifier"], ValueError, "no module of the model matches modules_to_save=['classifier']"),
        (["blocks.0"], ValueError, "modules_to_save: blocks.0 overlaps the adapted layer blocks.0.query"),
        (["query"], ValueError, "modules_to_save: blocks.0.query overlaps the adapted layer blocks.0.query"),
        ("head", TypeError, "modules_to_save must be a list of module names (as PEFT's), got str 'head'"),
        ([""], ValueError, "modules_to_save must hold non-empty names"),
        (5, TypeError, "modules_to_save must be a list of module names (as PEFT's), got int 5"),
        ([], ValueError, "modules_to_save must name at least one module (None: none), got []"),
    ],
)
def test_a_refused_inject_changes_nothing(modules_to_save, error, message):
    model = vit()
    before = snapshot(model)
    with pytest.raises(error, match=re.escape(message)):
        inject(model, TARGETS, modules_to_save=modules_to_save, **SETTINGS)
    assert snapshot(model) == before


def test_refusals_beside_existing_copies_change_nothing():
    model = trained_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=re.escape("modules_to_save: blocks.0 overlaps the adapted layer")):
        inject(model, ["mlp.0"], modules_to_save=["blocks.0"], adapter_name="other", **SETTINGS)
    # The adapter name's check on the layers comes first; its copy would be refused as well.
    with pytest.raises(ValueError, match="adapter 'default' already exists"):
        inject(model, TARGETS, modules_to_save=["head"], **SETTINGS)
    assert snapshot(model) == before


def test_a_load_that_does_not_fit_the_copies_changes_nothing(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_adapter(trained_model(), path)
    wider = vit(classes=4)  # the head's weight is (4, 24), the file's (3, 24)
    before = snapshot(wider)
    with pytest.raises(AdapterMismatchError, match=re.escape("tensor head.weight: (3, 24) torch.float32 in the checkpoint, (4, 24)")):
        load_adapter(wider, path)
    assert snapshot(wider) == before

    without_copy = vit()
    inject(without_copy, TARGETS, **SETTINGS)
    before = snapshot(without_copy)
    with pytest.raises(AdapterMismatchError, match=re.escape("tensor head.bias: in the checkpoint, in no module the model trains whole")):
        load_adapter(without_copy, path)
    assert snapshot(without_copy) == before


def test_a_saved_head_with_nan_is_refused_unless_allowed(tmp_path):
    model = trained_model()
    with torch.no_grad():
        model.head.modules_to_save["default"].bias[0] = float("nan")
    path = tmp_path / "adapter.safetensors"
    save_adapter(model, path)
    fresh = vit()
    before = snapshot(fresh)
    with pytest.raises(AdapterMismatchError, match=re.escape("tensor head.bias holds NaN or infinite values")):
        load_adapter(fresh, path)
    assert snapshot(fresh) == before
    load_adapter(fresh, path, allow_nonfinite=True)
    assert torch.isnan(fresh.head.modules_to_save["default"].bias[0])
