"""Hostile inputs to inject, set_active_adapter, delete_adapter, merging and the export: every
refusal names the argument as the caller wrote it and leaves the model exactly as it was
(tests/adapter_models.py's snapshot: modules, parameter and buffer bits, requires_grad flags,
training flags, adapters). Names introduced with these checks are looked up inside the tests,
so that each test fails on its own where they are missing."""

import fractions
import math
import re

import pytest
import torch
from adapter_models import TinyViT, randomize_coefficients, snapshot
from torch import nn

import nola_kernels
from nola_kernels import (
    NOLALinear,
    adapted_modules,
    delete_adapter,
    export_peft_lora,
    inject,
    merge_adapter,
    merge_and_unload,
    nola_basis,
    nola_matmul,
    nola_mix,
    nola_project,
    set_active_adapter,
    unmerge_adapter,
)
from nola_kernels.adapters.layer import NOLAAdapter

GOOD = dict(rank=2, num_basis=4, seed=1)


def mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def trained(model, targets, adapter_name="first", **settings):
    inject(model, targets, **{**GOOD, "seed": 7, **settings}, adapter_name=adapter_name)
    randomize_coefficients(model, adapter_name)
    return model


MODELS = {
    "fresh": lambda: mlp(),
    "eval": lambda: mlp().eval(),
    "mixed modes": lambda: _mixed_modes(),
    "adapted": lambda: trained(mlp().eval(), ["0", "4"]),
    "vit": lambda: TinyViT().eval(),
}


def _mixed_modes():
    model = mlp().train()
    model[2].eval()
    model[4].weight.requires_grad_(False)
    return model


def refused_unchanged(model, call, error=(TypeError, ValueError), match=None):
    before = snapshot(model)
    with pytest.raises(error, match=match):
        call()
    assert snapshot(model) == before


def names(argument):
    """A pattern for the argument's own name, not a longer one (num_basis, not num_basis_b)."""
    return rf"(?<![\w.]){re.escape(argument)}(?!\w)"


# Class 1: a refusal half-way through the modules changes nothing.
BAD_TARGETS = {  # id: (targets in mlp(), targets in TinyViT()); the last matching module cannot be adapted
    "linear-relu": (["0", "1"], ["query", "mlp.1"]),
    "linear-tanh": (["2", "3"], ["value", "norm1"]),
    "three-then-relu": (["0", "2", "4", "1"], ["query", "value", "mlp.0", "attn"]),
    "regex-all": (r"\d", r"blocks\.0\..*"),
    "last-then-tanh": (["4", "3"], ["head", "norm2"]),
}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("targets", list(BAD_TARGETS))
def test_inject_with_a_bad_module_changes_nothing(model_name, targets):
    model = MODELS[model_name]()
    targets = BAD_TARGETS[targets][model_name == "vit"]
    refused_unchanged(model, lambda: inject(model, targets, **GOOD), TypeError, "cannot adapt")


class Sized(nn.Module):
    """A module with in_features/out_features that a NOLA layer cannot use."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x):
        return x


@pytest.mark.parametrize(
    "sizes, argument",
    [((0, 3), "in_features"), ((3, 0), "out_features"), ((-2, 3), "in_features"), ((2.5, 3), "in_features"),
     (("3", 3), "in_features"), ((3, None), "out_features"), ((2**40, 3), r"\(rank, in_features\)")],
)  # fmt: skip
def test_inject_refuses_modules_with_bad_sizes(sizes, argument):
    model = nn.Sequential(nn.Linear(4, 3), Sized(*sizes))
    refused_unchanged(model, lambda: inject(model, ["0", "1"], **GOOD), match=argument)


def test_inject_refuses_an_existing_adapter_name_on_a_later_layer():
    model = trained(mlp(), ["4"], adapter_name="x")
    refused_unchanged(
        model, lambda: inject(model, ["0", "2", "4"], **GOOD, adapter_name="x"), ValueError, "'x' already"
    )


@pytest.mark.parametrize("targets", [["2"], ["0"], ["0", "2"]])
def test_inject_next_to_a_merged_adapter_changes_nothing(targets):
    model = trained(mlp().eval(), ["0", "4"])
    adapted_modules(model)["0"].merge()
    refused_unchanged(
        model, lambda: inject(model, targets, **GOOD, adapter_name="second"), RuntimeError, "merged"
    )


def test_set_active_adapter_next_to_a_merged_adapter_changes_nothing():
    model = trained(mlp(), ["0", "4"])
    inject(model, ["2"], **GOOD, adapter_name="second")
    set_active_adapter(model, "first")
    adapted_modules(model)["0"].merge()
    for name in ("second", None):
        refused_unchanged(model, lambda name=name: set_active_adapter(model, name), RuntimeError, "merged")


@pytest.mark.parametrize("adapter_name", ["nope", "firs", 5, "", None])
def test_delete_adapter_refuses_unknown_names(adapter_name):
    model = trained(mlp(), ["0", "4"])
    refused_unchanged(model, lambda: delete_adapter(model, adapter_name), (KeyError, TypeError, ValueError))


@pytest.mark.parametrize("adapter_name", [5, "", "a.b", ["first"], "nope"])
def test_set_active_adapter_refuses_bad_names(adapter_name):
    model = trained(mlp(), ["0", "4"])
    refused_unchanged(
        model, lambda: set_active_adapter(model, adapter_name), (KeyError, TypeError, ValueError)
    )


class Quantized(nn.Module):
    """Like a bitsandbytes Linear4bit: feature sizes, but a packed integer weight."""

    def __init__(self, in_features=4, out_features=3):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.randint(0, 255, (6, 1), dtype=torch.uint8))

    def forward(self, x):
        return x[..., : self.out_features]


def _model_with_unmergeable(position, kind):
    layers = [nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)]
    if kind == "quantized":
        layers[position] = Quantized(4, 4)
    model = nn.Sequential(*layers).eval()
    inject(model, ["0", "1", "2"], **GOOD)
    randomize_coefficients(model)
    if kind == "unavailable backend":
        adapted_modules(model)[str(position)].backend = "cuda"
    if kind == "half-merged":
        adapted_modules(model)[str(position)].merge()
    return model


UNMERGEABLE = ["quantized"] + (["unavailable backend"] if not torch.cuda.is_available() else [])


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("kind", UNMERGEABLE)
@pytest.mark.parametrize(
    "merge", [merge_and_unload, merge_adapter], ids=["merge_and_unload", "merge_adapter"]
)
def test_merge_refused_by_one_layer_changes_nothing(position, kind, merge):
    model = _model_with_unmergeable(position, kind)
    refused_unchanged(model, lambda: merge(model), (TypeError, RuntimeError), str(position))


@pytest.mark.parametrize("position", [0, 2])
def test_merge_adapter_with_a_merged_layer_changes_nothing(position):
    model = _model_with_unmergeable(position, "half-merged")
    refused_unchanged(model, lambda: merge_adapter(model), RuntimeError, "already merged")


def test_unmerge_with_an_unavailable_backend_changes_nothing():
    model = _model_with_unmergeable(0, "half-merged")
    adapted_modules(model)["0"].backend = "cuda"
    if torch.cuda.is_available():
        pytest.skip("the CUDA backend runs here")
    refused_unchanged(model, lambda: unmerge_adapter(model), RuntimeError, "0")


# Class 5: arguments refused by the name the caller wrote, at inject time.
BAD_INJECT_ARGUMENTS = {
    "rank": [0, -1, 2.5, "2", True, None, 10**400, float("nan")],
    "num_basis": [0, -4, 2**32 + 1, 4.0, "4", None, True, 10**400],
    "num_basis_b": [0, -1, 2**32 + 1, 3.5, "3", False],
    "lora_alpha": ["4", 10**400, -(10**400), math.inf, -math.inf, math.nan, True, [4], torch.tensor(4.0)],
    "dropout": [-0.1, 1.0, 1.5, math.nan, 10**400, "0", None, True],
    "distribution": ["normal", None, 5, "UNIFORM", ["uniform"], ""],
    "seed": [None, -1, 2**63, 1.5, "1", True, 10**400],
    "share_basis": ["no", "yes", 1, 0, None, "False"],
    "adapter_name": [5, "", "a.b", None, ["x"], b"default"],
    "backend": ["metal", "gpu", 5, None, "TORCH", "", "cuda:0"],
    "target_modules": [[], "", 5, [5], ["0", 3], "(", {"0"}, [""], None, b"0", ("0", None)],
}


@pytest.mark.parametrize(
    "argument, value",
    [(argument, value) for argument, values in BAD_INJECT_ARGUMENTS.items() for value in values],
    ids=lambda value: repr(value)[:20] if not isinstance(value, str) or value else "''",
)
def test_inject_refuses_bad_arguments_by_name(argument, value):
    model = trained(mlp().eval(), ["2"])
    arguments = dict(GOOD, target_modules=["0", "4"], adapter_name="second")
    arguments[argument] = value
    refused_unchanged(model, lambda: inject(model, **arguments), match=names(argument))


@pytest.mark.parametrize(
    "argument, value",
    [(a, v) for a in ("rank", "num_basis", "num_basis_b", "lora_alpha", "dropout", "distribution")
     for v in BAD_INJECT_ARGUMENTS[a]]
    + [(a, v) for a in ("seed_a", "seed_b") for v in (-1, 2**63, None, 1.5, "1")]
    + [("backend", v) for v in BAD_INJECT_ARGUMENTS["backend"]]
    + [("adapter_name", v) for v in BAD_INJECT_ARGUMENTS["adapter_name"]],
)  # fmt: skip
def test_nola_linear_refuses_bad_arguments_by_name(argument, value):
    base = nn.Linear(6, 5).eval()
    before = snapshot(base)
    arguments = dict(rank=2, num_basis=4, seed_a=1, seed_b=2)
    arguments[argument] = value
    with pytest.raises((TypeError, ValueError), match=names(argument)):
        NOLALinear(base, **arguments)
    assert snapshot(base) == before


def test_inject_refuses_a_model_that_is_not_a_module():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        inject({"0": nn.Linear(2, 2)}, ["0"], **GOOD)


# Class 6: numbers beyond float's range, devices that are not here.
HUGE = [10**400, -(10**400), 10**5000, fractions.Fraction(10**400, 3)]


@pytest.mark.parametrize("value", HUGE, ids=["1e400", "-1e400", "1e5000", "fraction"])
@pytest.mark.parametrize("function", ["nola_matmul", "nola_mix", "nola_project", "inject", "NOLALinear"])
def test_out_of_range_numbers_are_value_errors_naming_the_argument(function, value):
    calls = {
        "nola_matmul": ("scaling", lambda: nola_matmul(torch.randn(3, 4), torch.randn(5), torch.randn(2),
                        seed_a=1, seed_b=2, rank=2, out_features=3, scaling=value)),
        "nola_mix": ("scale", lambda: nola_mix(torch.randn(5), 1, (2, 3), scale=value)),
        "nola_project": ("scale", lambda: nola_project(torch.randn(2, 3), 1, 5, scale=value)),
        "inject": ("lora_alpha", lambda: inject(mlp(), ["0"], **GOOD, lora_alpha=value)),
        "NOLALinear": ("lora_alpha", lambda: NOLALinear(nn.Linear(3, 3), rank=1, num_basis=2, seed_a=1,
                                                         seed_b=2, lora_alpha=value)),
    }  # fmt: skip
    argument, call = calls[function]
    with pytest.raises(ValueError, match=names(argument)):
        call()


def test_infinite_scale_still_propagates():
    assert torch.isinf(nola_mix(torch.rand(5) + 0.5, 1, (2, 3), scale=math.inf)).any()


MISSING_DEVICES = [
    device
    for device, present in [
        ("cuda", torch.cuda.is_available()),
        ("cuda:0", torch.cuda.is_available()),
        ("cuda:7", torch.cuda.device_count() > 7),
        (torch.device("cuda", 1), torch.cuda.device_count() > 1),
        ("xla", False),
        ("mps", torch.backends.mps.is_available()),
        ("xpu", hasattr(torch, "xpu") and torch.xpu.is_available()),
        ("hpu", False),
    ]
    if not present
]


@pytest.mark.parametrize("device", MISSING_DEVICES, ids=str)
def test_nola_basis_on_a_missing_device_is_a_value_error(device):
    with pytest.raises(ValueError, match=names("device")):
        nola_basis(1, 2, (3, 3), device=device)


# Class 7: new layers take the training mode of the module they replace.
@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("model_name", ["fresh", "eval", "mixed modes"])
def test_new_layers_follow_the_mode_of_the_module_they_replace(model_name, dropout):
    model = MODELS[model_name]()
    modes = {name: module.training for name, module in model.named_modules()}
    inject(model, ["0", "2", "4"], **GOOD, dropout=dropout)
    for name, layer in adapted_modules(model).items():
        assert all(m.training == modes[name] for m in (layer, layer.adapters, *layer.adapters.modules()))
        assert all(m.training == modes[name] for m in layer.base_layer.modules())
    assert model.training == modes[""]
    if dropout and not model.training:
        randomize_coefficients(model)
        x = torch.randn(8, 6)
        assert torch.equal(model(x), model(x))  # no dropout in eval mode


@pytest.mark.parametrize("mode", [True, False])
def test_a_second_adapter_follows_the_layer_mode(mode):
    model = trained(mlp().train(mode), ["0", "2"], dropout=0.3)
    inject(model, ["0", "4"], **GOOD, adapter_name="second", dropout=0.3)
    for layer in adapted_modules(model).values():
        assert all(module.training == mode for module in layer.modules())


# Class 8: the export checks its target before it mixes anything.
@pytest.fixture
def adapted_for_export(monkeypatch):
    model = trained(mlp().eval(), ["0", "2"])
    set_active_adapter(model, "first")

    def no_mixing(*args, **kwargs):
        raise AssertionError("mixed before the arguments were checked")

    monkeypatch.setattr(NOLAAdapter, "factors", no_mixing)
    return model


@pytest.mark.parametrize("layout", ["file", "file above", "file two above", "model file is a folder"])
def test_export_refuses_its_target_before_mixing(tmp_path, adapted_for_export, layout):
    blocker = tmp_path / "blocker"
    target = {
        "file": blocker,
        "file above": blocker / "lora",
        "file two above": blocker / "a" / "lora",
        "model file is a folder": tmp_path / "lora",
    }[layout]
    if layout == "model file is a folder":
        (target / "adapter_model.safetensors").mkdir(parents=True)
    else:
        blocker.write_bytes(b"keep me")
    before = snapshot(adapted_for_export)
    with pytest.raises((FileExistsError, IsADirectoryError), match="directory"):
        export_peft_lora(adapted_for_export, target)
    assert snapshot(adapted_for_export) == before
    assert layout == "model file is a folder" or blocker.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "arguments, argument",
    [(dict(adapter_name=5), "adapter_name"), (dict(adapter_name=""), "adapter_name"),
     (dict(adapter_name="nope"), "nope"), (dict(dtype=torch.int8), "dtype"), (dict(dtype="float32"), "dtype"),
     (dict(base_model_name_or_path=5), "base_model_name_or_path"), (dict(directory=5), "directory"),
     (dict(directory=None), "directory")],
)  # fmt: skip
def test_export_refuses_bad_arguments_before_mixing(tmp_path, adapted_for_export, arguments, argument):
    arguments = {"directory": tmp_path / "lora", **arguments}
    with pytest.raises((TypeError, ValueError, KeyError), match=argument):
        export_peft_lora(adapted_for_export, **arguments)
    assert not (tmp_path / "lora").exists()


def test_export_into_an_existing_folder_replaces_its_two_files(tmp_path):
    model = trained(mlp().eval(), ["0", "2"])
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "adapter_config.json").write_text("old")
    export_peft_lora(model, tmp_path, adapter_name="first")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert '"peft_type": "LORA"' in (tmp_path / "adapter_config.json").read_text()


@pytest.mark.parametrize(
    "arguments, argument",
    [(dict(rank=0), "rank"), (dict(rank="2"), "rank"), (dict(lora_alpha=10**400), "lora_alpha"),
     (dict(lora_alpha=math.nan), "lora_alpha"), (dict(fan_in_fan_out="no"), "fan_in_fan_out"),
     (dict(factors={}), "factors"), (dict(factors={"x": torch.zeros(2, 3)}), "factors"),
     (dict(factors={"x": (torch.zeros(3, 4), torch.zeros(5, 2))}), "factors"), (dict(dtype=torch.int32), "dtype")],
)  # fmt: skip
def test_write_peft_lora_refuses_bad_arguments_before_writing(tmp_path, arguments, argument):
    arguments = {
        "factors": {"x": (torch.randn(2, 4), torch.randn(5, 2))},
        "rank": 2,
        "lora_alpha": 4.0,
        **arguments,
    }
    with pytest.raises((TypeError, ValueError), match=argument):
        nola_kernels.adapters.write_peft_lora(tmp_path / "lora", **arguments)
    assert not (tmp_path / "lora").exists()


# Official checkpoints: merge_factors checks every module first; unreadable files are one error.
def _factors(model):
    return {name: (torch.randn(2, m.in_features), torch.randn(m.out_features, 2))
            for name, m in model.named_children() if isinstance(m, nn.Linear)}  # fmt: skip


@pytest.mark.parametrize(
    "change, error",
    [("missing module", ValueError), ("not a linear", (TypeError, ValueError)), ("A too wide", ValueError),
     ("B too tall", ValueError), ("ranks differ", ValueError), ("scaling", ValueError), ("quantized", TypeError)],
)  # fmt: skip
def test_merge_factors_checks_every_module_first(change, error):
    model = mlp()
    factors = _factors(model)
    scaling = 2.0
    if change == "missing module":
        factors["9"] = factors["0"]
    elif change == "not a linear":
        factors["1"] = factors["0"]
    elif change == "A too wide":
        factors["4"] = (torch.randn(2, 5), factors["4"][1])
    elif change == "B too tall":
        factors["4"] = (factors["4"][0], torch.randn(4, 2))
    elif change == "ranks differ":
        factors["4"] = (torch.randn(3, 4), factors["4"][1])
    elif change == "scaling":
        scaling = 10**400
    else:
        model[4] = Quantized(4, 3)
        factors["4"] = (torch.randn(2, 4), torch.randn(3, 2))
    refused_unchanged(model, lambda: nola_kernels.adapters.merge_factors(model, factors, scaling), error)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors", ".pt"])
@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_unreadable_official_checkpoints_are_one_error(tmp_path, suffix, content):
    path = tmp_path / f"official{suffix}"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(nola_kernels.adapters.AdapterFileError, match=re.escape(str(path))) as error:
        nola_kernels.adapters.official_factors(path, layout="generator")
    assert error.value.__cause__ is not None
