"""NOLA as a PEFT method (nola_kernels/peft.py) on tiny random Llama, GPT-2 and ViT-like models:
get_peft_model computes what inject computes, bit for bit; save_pretrained / from_pretrained,
disable_adapter, merge_and_unload, several adapters, modules_to_save, all-linear,
layers_to_transform; refused calls change nothing."""

import copy
import dataclasses
import json
import re

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from adapter_models import TinyViT, coefficients, snapshot, tiny_gpt2, tiny_llama  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import nola_kernels  # noqa: E402
import nola_kernels.peft as nola_peft  # noqa: E402
from nola_kernels import adapted_modules  # noqa: E402
from nola_kernels.adapters.grouping import is_grouped  # noqa: E402
from nola_kernels.peft import NOLA_PEFT_TYPE, NolaConfig, NolaLayer, check_peft_version  # noqa: E402

SETTINGS = dict(r=2, num_basis=16, num_basis_b=12, lora_alpha=4.0, seed=7)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return TinyViT().eval()


MODELS = {
    "llama": (tiny_llama, ["q_proj", "v_proj", "down_proj"]),
    "gpt2": (tiny_gpt2, ["c_attn", "c_proj"]),
    "vit": (tiny_vit, ["query", "value", "mlp.2"]),
}


def inputs(kind, seed=1):
    generator = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return torch.randn(3, 5, 12, generator=generator)
    return torch.randint(0, 64, (2, 8), generator=generator)


def run(model, kind, x):
    out = model(x)
    return out if kind == "vit" else out.logits


def train(model, kind, steps=3):
    """A few SGD steps, so that alpha and beta (zero at first) are no longer zero."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    for step in range(steps):
        torch.manual_seed(step)  # the same dropout masks for every model trained here
        optimizer.zero_grad()
        run(model, kind, inputs(kind, seed=10 + step)).float().square().mean().backward()
        optimizer.step()
    model.eval()


def peft_coefficients(state_dict):
    """{"<module>.alpha" / "<module>.beta": tensor} from a PEFT adapter state dict."""
    return {
        key.removeprefix("base_model.model.").replace(".adapters.", "."): value
        for key, value in state_dict.items()
        if ".adapters." in key
    }


@pytest.mark.parametrize("kind", MODELS)
def test_get_peft_model_matches_inject_bit_for_bit(kind, tmp_path):
    build, targets = MODELS[kind]
    injected = build()
    nola_kernels.inject(
        injected, targets, rank=2, num_basis=16, num_basis_b=12, lora_alpha=4.0, seed=7
    )
    tuned = peft.get_peft_model(build(), NolaConfig(target_modules=targets, **SETTINGS))
    assert list(adapted_modules(tuned.base_model.model)) == list(adapted_modules(injected))
    train(injected, kind)
    train(tuned, kind)
    x = inputs(kind)
    assert torch.equal(run(tuned, kind, x), run(injected, kind, x))

    nola_kernels.save_adapter(injected, tmp_path / "injected.safetensors")
    tuned.save_pretrained(tmp_path / "tuned")
    from_inject = load_file(tmp_path / "injected.safetensors")
    from_peft = peft_coefficients(load_file(tmp_path / "tuned" / "adapter_model.safetensors"))
    assert from_inject.keys() == from_peft.keys()
    assert all(torch.equal(from_inject[k], from_peft[k]) for k in from_inject)
    assert all(v.abs().sum() > 0 for v in from_peft.values())


@pytest.mark.parametrize("kind", MODELS)
def test_save_pretrained_and_from_pretrained(kind, tmp_path):
    build, targets = MODELS[kind]
    tuned = peft.get_peft_model(build(), NolaConfig(target_modules=targets, **SETTINGS))
    train(tuned, kind)
    tuned.save_pretrained(tmp_path)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "NOLA" and config["seed"] == 7
    assert config["spec_version"] == "NOLA-Philox v1"  # a v1 distribution: readable by every release
    saved = load_file(tmp_path / "adapter_model.safetensors")
    layers = adapted_modules(tuned.base_model.model)
    assert len(saved) == 2 * len(layers)
    assert sum(v.numel() for v in saved.values()) == len(layers) * (16 + 12)

    loaded = peft.PeftModel.from_pretrained(build(), tmp_path)
    assert loaded.peft_config["default"].peft_type == NOLA_PEFT_TYPE
    x = inputs(kind)
    assert torch.equal(run(loaded, kind, x), run(tuned, kind, x))
    assert coefficients(loaded.base_model.model).keys() == coefficients(tuned.base_model.model).keys()
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode by default
    lazily = peft.PeftModel.from_pretrained(build(), tmp_path, low_cpu_mem_usage=True)
    assert torch.equal(run(lazily, kind, x), run(tuned, kind, x))


@pytest.mark.parametrize(
    "distribution, given, recorded",
    [
        ("uniform", None, "NOLA-Philox v1"),
        ("uniform", "NOLA-Philox v1.1", "NOLA-Philox v1"),  # v1.1 keeps v1's values
        ("rademacher_philox7", None, "NOLA-Philox v1.1"),
        ("uniform16_philox7", "NOLA-Philox v1.1", "NOLA-Philox v1.1"),
    ],
)
def test_the_config_records_the_version_its_distribution_needs(distribution, given, recorded):
    config = NolaConfig(target_modules=["q_proj"], distribution=distribution, spec_version=given, **SETTINGS)
    assert config.spec_version == recorded


def test_spec_version_follows_a_later_change_of_the_distribution(tmp_path):
    config = NolaConfig(target_modules=["q_proj"], **SETTINGS)
    config.distribution = "uniform16_philox7"
    assert config.spec_version == "NOLA-Philox v1.1" and config.to_dict()["spec_version"] == "NOLA-Philox v1.1"
    assert dataclasses.replace(config).spec_version == "NOLA-Philox v1.1"
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["distribution"], saved["spec_version"]) == ("uniform16_philox7", "NOLA-Philox v1.1")
    loaded = NolaConfig.from_pretrained(tmp_path)
    assert (loaded.distribution, loaded.spec_version) == ("uniform16_philox7", "NOLA-Philox v1.1")

    config.distribution = "rademacher"
    assert config.spec_version == "NOLA-Philox v1"
    config.spec_version = "NOLA-Philox v1.1"  # checked; the distribution still says which it records
    assert config.spec_version == "NOLA-Philox v1"
    config.distribution = "rademacher_philox7"
    for version, message in [
        ("NOLA-Philox v1", "spec_version 'NOLA-Philox v1' does not define distribution 'rademacher_philox7'"),
        ("NOLA-Philox v0", "spec_version 'NOLA-Philox v0': this library reads"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            config.spec_version = version
        assert config.spec_version == "NOLA-Philox v1.1"


def test_a_saved_config_without_spec_version_is_read(tmp_path):
    NolaConfig(target_modules=["q_proj"], distribution="uniform16_philox7", **SETTINGS).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    del saved["spec_version"]
    path.write_text(json.dumps(saved))
    assert NolaConfig.from_pretrained(tmp_path).spec_version == "NOLA-Philox v1.1"


def test_a_v1_1_distribution_through_save_pretrained_and_from_pretrained(tmp_path):
    settings = dict(target_modules=MODELS["vit"][1], distribution="uniform16_philox7", **SETTINGS)
    tuned = peft.get_peft_model(tiny_vit(), NolaConfig(**settings))
    train(tuned, "vit")
    tuned.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["spec_version"] == "NOLA-Philox v1.1" and config["distribution"] == "uniform16_philox7"
    loaded = peft.PeftModel.from_pretrained(tiny_vit(), tmp_path)
    x = inputs("vit")
    assert torch.equal(run(loaded, "vit", x), run(tuned, "vit", x))


def test_print_trainable_parameters_counts_the_coefficients(capsys):
    tuned = peft.get_peft_model(tiny_llama(), NolaConfig(target_modules=["q_proj", "v_proj"], **SETTINGS))
    trainable, _ = tuned.get_nb_trainable_parameters()
    assert trainable == 4 * (16 + 12)  # 2 layers x (q_proj, v_proj)
    assert trainable == sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    tuned.print_trainable_parameters()
    assert f"trainable params: {trainable:,}" in capsys.readouterr().out


def test_disable_adapter_gives_the_base_model():
    tuned = peft.get_peft_model(tiny_gpt2(), NolaConfig(target_modules=["c_attn"], **SETTINGS))
    train(tuned, "gpt2")
    x = inputs("gpt2")
    adapted = run(tuned, "gpt2", x)
    with tuned.disable_adapter():
        assert torch.equal(run(tuned, "gpt2", x), run(tiny_gpt2(), "gpt2", x))
    assert torch.equal(run(tuned, "gpt2", x), adapted)
    assert all(p.requires_grad for n, p in tuned.named_parameters() if ".adapters." in n)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_merge_and_unload_gives_the_plain_model(kind):
    build, targets = MODELS[kind]
    tuned = peft.get_peft_model(build(), NolaConfig(target_modules=targets, **SETTINGS))
    train(tuned, kind)
    x = inputs(kind)
    adapted = run(tuned, kind, x)
    merged = tuned.merge_and_unload()
    assert not adapted_modules(merged)
    assert [type(m) for m in merged.modules()] == [type(m) for m in build().modules()]
    assert (run(merged, kind, x) - adapted).abs().max() <= 1e-4 * adapted.abs().max()


def test_merge_adapter_unmerge_adapter_and_unload():
    tuned = peft.get_peft_model(tiny_gpt2(), NolaConfig(target_modules=["c_attn"], **SETTINGS))
    train(tuned, "gpt2")
    x = inputs("gpt2")
    adapted = run(tuned, "gpt2", x)
    tuned.merge_adapter()
    layers = adapted_modules(tuned.base_model.model).values()
    assert all(layer.merged_adapters == ["default"] for layer in layers)
    assert (run(tuned, "gpt2", x) - adapted).abs().max() <= 1e-4 * adapted.abs().max()
    tuned.unmerge_adapter()
    assert all(not layer.merged for layer in layers)
    assert (run(tuned, "gpt2", x) - adapted).abs().max() <= 1e-5 * adapted.abs().max()
    base = tuned.unload()
    assert not adapted_modules(base)
    assert (run(base, "gpt2", x) - run(tiny_gpt2(), "gpt2", x)).abs().max() <= 1e-6


def grouped_peft_model():
    """A trained tiny GPT-2 PeftModel whose base model and a module inside it group generation,
    after one forward with grad enabled (its layers hold that pass's factors), and an ungrouped
    copy of it."""
    tuned = peft.get_peft_model(
        tiny_gpt2(), NolaConfig(target_modules=["c_attn", "c_proj"], share_basis=True, **SETTINGS)
    )
    train(tuned, "gpt2")
    reference = copy.deepcopy(tuned)
    nola_kernels.group_generation(tuned.base_model.model)
    nola_kernels.group_generation(tuned.base_model.model.transformer)
    run(tuned, "gpt2", inputs("gpt2"))
    assert all(layer.grouped is not None for layer in adapted_modules(tuned).values())
    return tuned, reference


def hooked_modules(model):
    return [name for name, module in model.named_modules() if module._forward_pre_hooks or module._forward_hooks]


@pytest.mark.parametrize("remove", ["unload", "merge_and_unload"])
def test_peft_unload_and_merge_and_unload_remove_the_grouping(remove):
    tuned, reference = grouped_peft_model()
    model, layers = tuned.base_model.model, list(adapted_modules(tuned).values())
    assert getattr(tuned, remove)() is model
    assert hooked_modules(model) == [] and not is_grouped(model) and not is_grouped(model.transformer)
    assert all(layer.grouped is None for layer in layers)  # the dropped layers let go of their factors
    x = inputs("gpt2")
    assert torch.equal(run(model, "gpt2", x), run(getattr(reference, remove)(), "gpt2", x))


def test_a_refused_peft_merge_and_unload_changes_nothing():
    tuned, _ = grouped_peft_model()
    with torch.no_grad():  # the second layer in module order: the first would be merged already
        tuned.base_model.model.transformer.h[0].attn.c_proj.adapters["default"].alpha[3] = float("nan")
    before, factors = snapshot(tuned), [layer.grouped for layer in adapted_modules(tuned).values()]
    with pytest.raises(
        ValueError, match=re.escape("transformer.h.0.attn.c_proj: adapter 'default' has non-finite coefficients")
    ):
        tuned.merge_and_unload(safe_merge=True)
    with pytest.raises(ValueError, match="a NOLA layer runs one adapter at a time"):
        tuned.merge_and_unload(adapter_names=["default", "other"])
    assert snapshot(tuned) == before and is_grouped(tuned.base_model.model)
    assert [layer.grouped for layer in adapted_modules(tuned).values()] == factors


def test_peft_merge_and_unload_refuses_a_second_merge_before_any_change():
    tuned, _ = grouped_peft_model()
    tuned.add_adapter("other", NolaConfig(target_modules=["c_proj"], **SETTINGS))
    tuned.base_model.merge_adapter(["other"])  # the c_proj layers now hold "other" merged
    before = snapshot(tuned)
    with pytest.raises(
        RuntimeError,
        match=re.escape("transformer.h.0.attn.c_proj: adapter 'other' is merged: unmerge it before merging 'default'"),
    ):
        tuned.merge_and_unload(adapter_names=["default"])
    assert snapshot(tuned) == before and is_grouped(tuned.base_model.model)


def test_several_adapters_switch_and_delete(tmp_path):
    tuned = peft.get_peft_model(tiny_llama(), NolaConfig(target_modules=["q_proj"], **SETTINGS))
    train(tuned, "llama")
    other = NolaConfig(target_modules=["q_proj", "v_proj"], r=3, num_basis=8, seed=11)
    tuned.add_adapter("other", other)
    x = inputs("llama")
    default_out = run(tuned, "llama", x)  # adding an adapter keeps the active one
    tuned.set_adapter("other")
    train(tuned, "llama")
    other_out = run(tuned, "llama", x)
    assert not torch.equal(other_out, default_out)

    injected = tiny_llama()
    nola_kernels.inject(injected, ["q_proj", "v_proj"], rank=3, num_basis=8, seed=11, adapter_name="other")
    with torch.no_grad():
        for name, layer in adapted_modules(tuned.base_model.model).items():
            for role in ("alpha", "beta"):
                getattr(adapted_modules(injected)[name].adapters["other"], role).copy_(
                    getattr(layer.adapters["other"], role)
                )
    assert torch.equal(run(injected, "llama", x), other_out)

    tuned.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_config.json").is_file()
    tuned.set_adapter("default")
    assert torch.equal(run(tuned, "llama", x), default_out)
    tuned.delete_adapter("other")
    left = {name: list(layer.adapters) for name, layer in adapted_modules(tuned.base_model.model).items()}
    assert left == {name: ["default"] if "q_proj" in name else [] for name in left}
    assert torch.equal(run(tuned, "llama", x), default_out)


def test_modules_to_save_trains_and_saves_a_new_head(tmp_path):
    config = NolaConfig(target_modules=["query", "value"], modules_to_save=["head"], **SETTINGS)
    tuned = peft.get_peft_model(tiny_vit(), config)
    head = dict(tuned.named_parameters())
    assert any(p.requires_grad for n, p in head.items() if "head.modules_to_save" in n)
    train(tuned, "vit")
    tuned.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert {k for k in saved if ".adapters." not in k} == {"base_model.model.head.weight", "base_model.model.head.bias"}
    assert not torch.equal(saved["base_model.model.head.weight"], tiny_vit().head.weight)
    loaded = peft.PeftModel.from_pretrained(tiny_vit(), tmp_path)
    x = inputs("vit")
    assert torch.equal(run(loaded, "vit", x), run(tuned, "vit", x))


def test_all_linear_adapts_every_linear_layer_but_the_output_layer():
    tuned = peft.get_peft_model(tiny_llama(), NolaConfig(target_modules="all-linear", **SETTINGS))
    names = list(adapted_modules(tuned.base_model.model))
    linear = [n for n, m in tiny_llama().named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert names == linear and len(names) == 14


def test_layers_to_transform_picks_layers():
    config = NolaConfig(target_modules=["q_proj", "v_proj"], layers_to_transform=[1], **SETTINGS)
    tuned = peft.get_peft_model(tiny_llama(), config)
    assert list(adapted_modules(tuned.base_model.model)) == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]


def test_gpt2_conv1d_layout_and_fan_in_fan_out():
    config = NolaConfig(target_modules=["c_attn"], fan_in_fan_out=True, **SETTINGS)
    tuned = peft.get_peft_model(tiny_gpt2(), config)
    layer = adapted_modules(tuned.base_model.model)["transformer.h.0.attn.c_attn"]
    assert isinstance(layer, NolaLayer) and (layer.in_features, layer.out_features) == (32, 96)
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(ValueError, match=re.escape("fan_in_fan_out=True but model.layers.0.self_attn.q_proj")):
        peft.get_peft_model(model, NolaConfig(target_modules=["q_proj"], fan_in_fan_out=True, **SETTINGS))
    assert snapshot(model) == before


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(r=0), "r must be"),
        (dict(num_basis=0), "num_basis"),
        (dict(dropout=1.5), "dropout"),
        (dict(distribution="cauchy"), "distribution"),
        (dict(seed=-1), "seed"),
        (dict(bias="all"), "bias must be 'none'"),
        (dict(backend="gpu"), "backend"),
        (dict(spec_version="NOLA-Philox v0"), "spec_version 'NOLA-Philox v0'"),
        (
            dict(distribution="uniform16_philox7", spec_version="NOLA-Philox v1"),
            re.escape("spec_version 'NOLA-Philox v1' does not define distribution 'uniform16_philox7'"),
        ),
        (dict(target_parameters=["weight"]), "target_parameters"),
    ],
)
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises((TypeError, ValueError), match=message):
        NolaConfig(target_modules=["q_proj"], **{**SETTINGS, **settings})


def test_a_refused_get_peft_model_or_add_adapter_changes_nothing():
    model = tiny_gpt2()
    before = snapshot(model)
    # wte (an embedding) has no in/out features: found while planning, after c_attn matched.
    with pytest.raises(TypeError, match=re.escape("cannot adapt transformer.wte")):
        peft.get_peft_model(model, NolaConfig(target_modules=["c_attn", "wte"], **SETTINGS))
    assert snapshot(model) == before

    tuned = peft.get_peft_model(model, NolaConfig(target_modules=["c_attn"], **SETTINGS))
    before = snapshot(tuned)
    with pytest.raises(ValueError, match="adapter 'default' already exists"):
        tuned.base_model.inject_adapter(tuned.base_model.model, "default")
    assert snapshot(tuned) == before
    with pytest.raises(TypeError, match=re.escape("cannot adapt transformer.wte")):
        tuned.add_adapter("other", NolaConfig(target_modules=["c_attn", "wte"], **SETTINGS))
    assert snapshot(tuned) == before and list(tuned.peft_config) == ["default"]


def test_an_untested_peft_version_is_refused():
    check_peft_version(peft.__version__)
    with pytest.raises(ImportError, match=re.escape("tested with peft 0.21.2, this is peft 0.22.0")):
        check_peft_version("0.22.0")


@pytest.mark.parametrize("kind", MODELS)
def test_save_adapter_to_a_folder_gives_what_peft_model_loads(kind, tmp_path):
    build, targets = MODELS[kind]
    injected = build()
    nola_kernels.inject(injected, targets, rank=2, num_basis=16, num_basis_b=12, lora_alpha=4.0, seed=7)
    train(injected, kind)
    size = nola_kernels.save_adapter(injected, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert size == sum(p.stat().st_size for p in tmp_path.iterdir())
    loaded = peft.PeftModel.from_pretrained(build(), tmp_path)
    x = inputs(kind)
    assert torch.equal(run(loaded, kind, x), run(injected, kind, x))
    single = tmp_path / "adapter.nola.safetensors"
    nola_kernels.save_adapter(injected, single)  # a file path keeps the one-file checkpoint
    assert nola_kernels.load_adapter(build(), single)


def test_save_adapter_to_a_folder_refuses_explicit_seeds_before_writing(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model[0] = nola_kernels.NOLALinear(model[0], rank=2, num_basis=8, seed_a=1, seed_b=2)
    with pytest.raises(ValueError, match="explicit seeds"):
        nola_kernels.save_adapter(model, tmp_path)
    assert not any(tmp_path.iterdir())


def test_exclude_modules_match_inject():
    excluded = ["model.layers.0.self_attn.q_proj"]
    tuned = peft.get_peft_model(
        tiny_llama(), NolaConfig(target_modules=["q_proj", "v_proj"], exclude_modules=excluded, **SETTINGS)
    )
    injected = tiny_llama()
    settings = dict(rank=2, num_basis=16, num_basis_b=12, lora_alpha=4.0, seed=7)
    names = nola_kernels.inject(injected, ["q_proj", "v_proj"], exclude_modules=excluded, **settings)
    assert list(adapted_modules(tuned.base_model.model)) == names and len(names) == 3
    train(tuned, "llama")
    train(injected, "llama")
    assert torch.equal(run(tuned, "llama", inputs("llama")), run(injected, "llama", inputs("llama")))


def test_registration_is_in_peft_mappings_and_refuses_a_conflict(monkeypatch):
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    assert PEFT_TYPE_TO_CONFIG_MAPPING["NOLA"] is NolaConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["NOLA"] is nola_peft.NolaModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING["NOLA"] == "adapters."
    assert (NOLA_PEFT_TYPE.name, NOLA_PEFT_TYPE.value) == ("NOLA", "NOLA")
    assert "NOLA" not in {member.value for member in peft.PeftType}  # the enum is left alone
    nola_peft._register()  # registering the same classes again is no conflict
    monkeypatch.setitem(PEFT_TYPE_TO_TUNER_MAPPING, "NOLA", peft.LoraModel)
    with pytest.raises(RuntimeError, match="already has a method registered as 'NOLA'"):
        nola_peft._register()


def test_the_field_table_covers_every_adapter_setting_both_ways():
    from nola_kernels.adapters.config import AdapterConfig

    ours = [ours for _, ours in nola_peft.CONFIG_FIELD_PAIRS]
    assert sorted(ours) == sorted(field.name for field in dataclasses.fields(AdapterConfig))
    config = NolaConfig(
        target_modules=["q_proj", "v_proj"], exclude_modules=["lm_head"], modules_to_save=["score"], **SETTINGS
    )
    adapter_config = config.adapter_config()
    assert (adapter_config.rank, adapter_config.target_modules) == (2, ("q_proj", "v_proj"))
    settings = {theirs: nola_peft._to_peft(getattr(adapter_config, ours)) for theirs, ours in nola_peft.CONFIG_FIELD_PAIRS}
    assert NolaConfig(**settings).adapter_config() == adapter_config


def test_modules_to_save_of_get_peft_model_and_inject_train_alike(tmp_path):
    tuned = peft.get_peft_model(tiny_vit(), NolaConfig(target_modules=["query"], modules_to_save=["head"], **SETTINGS))
    injected = tiny_vit()
    settings = dict(rank=2, num_basis=16, num_basis_b=12, lora_alpha=4.0, seed=7)
    nola_kernels.inject(injected, ["query"], modules_to_save=["head"], **settings)
    train(tuned, "vit")
    train(injected, "vit")
    x = inputs("vit")
    assert torch.equal(run(tuned, "vit", x), run(injected, "vit", x))
    nola_kernels.save_adapter(injected, tmp_path)
    tuned.save_pretrained(tmp_path / "tuned")
    from_inject = load_file(tmp_path / "adapter_model.safetensors")
    from_peft = load_file(tmp_path / "tuned" / "adapter_model.safetensors")
    assert from_inject.keys() == from_peft.keys()
    assert all(torch.equal(from_inject[k], from_peft[k]) for k in from_inject)
    # PEFT's own copies are not inject's: saving the PeftModel through save_adapter is refused.
    with pytest.raises(ValueError, match="save it with save_pretrained"):
        nola_kernels.save_adapter(tuned, tmp_path / "refused.safetensors")
    assert not (tmp_path / "refused.safetensors").exists()
