"""inject: which modules it adapts, what trains, per-module seeds, named adapters, unload."""

import copy

import pytest
import torch
from adapter_models import TinyViT, randomize_coefficients, snapshot, tiny_gpt2

from nola_kernels import (
    NOLALinear,
    adapted_modules,
    delete_adapter,
    inject,
    load_adapter,
    save_adapter,
    set_active_adapter,
    unload,
)
from nola_kernels.adapters.seeds import derive_seed

VIT_TARGETS = ["query", "value", "mlp.0", "mlp.2"]


def trainable(model):
    return sorted(name for name, p in model.named_parameters() if p.requires_grad)


def test_names_and_regex_pick_the_same_modules():
    by_names, by_regex = TinyViT(), TinyViT()
    names = inject(by_names, VIT_TARGETS, rank=2, num_basis=8, seed=0)
    regex = inject(by_regex, r"blocks\.\d+\.(query|value|mlp\.[02])", rank=2, num_basis=8, seed=0)
    assert (
        names == regex == [f"blocks.{i}.{t}" for i in range(2) for t in ("query", "value", "mlp.0", "mlp.2")]
    )
    assert all(isinstance(by_names.get_submodule(n), NOLALinear) for n in names)


def test_only_the_coefficients_train():
    model = TinyViT()
    names = inject(model, VIT_TARGETS, rank=2, num_basis=8, seed=0)
    assert trainable(model) == sorted(f"{n}.adapters.default.{c}" for n in names for c in ("alpha", "beta"))


def test_no_match_and_bad_targets_are_errors():
    with pytest.raises(ValueError, match="no module"):
        inject(TinyViT(), ["nothing"], rank=2, num_basis=8, seed=0)
    with pytest.raises(ValueError, match="target_modules"):
        inject(TinyViT(), [], rank=2, num_basis=8, seed=0)
    with pytest.raises(TypeError, match=r"blocks\.0\.mlp \(Sequential\)"):
        inject(TinyViT(), ["blocks.0.mlp"], rank=2, num_basis=8, seed=0)


def test_seed_derivation_is_pinned():
    # Part of the checkpoint contract (docs/adapters.md): a change here changes saved adapters.
    assert derive_seed(0, "module:blocks.0.query", "A") == 330807617373872538


def seeds_of(model, adapter_name="default"):
    return {
        n: (m.adapters[adapter_name].seed_a, m.adapters[adapter_name].seed_b)
        for n, m in adapted_modules(model).items()
    }


def test_seeds_follow_master_seed_and_name():
    first, second, other = TinyViT(), TinyViT(), TinyViT()
    for model, seed in ((first, 5), (second, 5), (other, 6)):
        inject(model, VIT_TARGETS, rank=2, num_basis=8, seed=seed)
    assert seeds_of(first) == seeds_of(second)
    all_seeds = [s for pair in seeds_of(first).values() for s in pair]
    assert len(set(all_seeds)) == len(all_seeds)  # every module and role its own
    assert not set(all_seeds) & {s for pair in seeds_of(other).values() for s in pair}


def test_share_basis_gives_one_seed_pair_per_shape():
    model = TinyViT()
    inject(model, VIT_TARGETS, rank=2, num_basis=8, seed=5, share_basis=True)
    seeds = seeds_of(model)
    assert seeds["blocks.0.query"] == seeds["blocks.1.query"] == seeds["blocks.0.value"]
    assert seeds["blocks.0.mlp.0"] == seeds["blocks.1.mlp.0"] != seeds["blocks.0.mlp.2"]
    assert seeds["blocks.0.query"][0] != seeds["blocks.0.query"][1]


def test_named_adapters_switch_and_unload_restores_exactly():
    model = TinyViT().eval()
    # Frozen like the adapted model: MultiheadAttention takes another (fused) path without grad.
    original = copy.deepcopy(model).requires_grad_(False)
    layers_before = {n: model.get_submodule(n) for n in ("blocks.0.query", "blocks.1.mlp.2")}
    x = torch.randn(3, 5, 12)
    expected = original(x)
    inject(model, VIT_TARGETS, rank=2, num_basis=8, seed=1, adapter_name="first")
    inject(model, ["query"], rank=3, num_basis=4, seed=2, adapter_name="second")
    randomize_coefficients(model, "first")
    randomize_coefficients(model, "second")

    set_active_adapter(model, "first")
    out_first = model(x)
    assert trainable(model) == sorted(
        f"{n}.adapters.first.{c}" for n in adapted_modules(model) for c in ("alpha", "beta")
    )
    set_active_adapter(model, "second")
    out_second = model(x)
    assert "blocks.0.mlp.0.adapters.second.alpha" not in trainable(model)
    assert not torch.allclose(out_first, out_second) and not torch.allclose(out_first, expected)
    set_active_adapter(model, None)
    assert torch.equal(model(x), expected) and trainable(model) == []
    set_active_adapter(model, "first")
    assert torch.equal(model(x), out_first)
    with pytest.raises(KeyError, match="third"):
        set_active_adapter(model, "third")

    delete_adapter(model, "second")
    assert all(list(layer.adapters) == ["first"] for layer in adapted_modules(model).values())
    unload(model)
    assert not adapted_modules(model)
    assert all(model.get_submodule(n) is m for n, m in layers_before.items())
    assert model.state_dict().keys() == original.state_dict().keys()
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(x), expected)


def fit(model, x, y, steps=40, lr=0.05):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_loss_falls_on_a_small_task_and_only_coefficients_change():
    model = TinyViT()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    inject(model, [*VIT_TARGETS, "head"], rank=2, num_basis=16, seed=0)
    x, y = torch.randn(32, 5, 12), torch.randint(0, 3, (32,))
    losses = fit(model, x, y, steps=20, lr=0.1)
    assert losses[-1] < 0.7 * losses[0]
    unload(model)
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items())


def test_gpt2_conv1d_layers_adapt_and_learn():
    model = tiny_gpt2()
    names = inject(model, ["c_attn", "c_proj"], rank=2, num_basis=16, seed=3)
    assert names == [
        f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_proj")
    ]
    assert model.get_submodule("transformer.h.0.attn.c_attn").out_features == 96
    tokens = torch.randint(0, 64, (4, 16))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(8):
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert all(n.endswith((".alpha", ".beta")) for n in trainable(model))


@pytest.mark.parametrize("exclude", [["blocks.1.query"], r"blocks\.1\.query"])
def test_exclude_modules_leaves_modules_out_and_is_saved(exclude, tmp_path):
    torch.manual_seed(0)
    model = TinyViT()
    names = inject(model, ["query", "value"], rank=2, num_basis=8, seed=3, exclude_modules=exclude)
    assert names == ["blocks.0.query", "blocks.0.value", "blocks.1.value"]
    randomize_coefficients(model)
    save_adapter(model, tmp_path / "a.safetensors")
    torch.manual_seed(0)
    fresh = TinyViT()
    assert load_adapter(fresh, tmp_path / "a.safetensors") == names  # injected from the saved config
    x = torch.randn(2, 5, 12)
    assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize(
    ("exclude", "message"),
    [(["query", "value"], "no module of the model matches"), ([""], "exclude_modules must hold"),
     ("(", "exclude_modules is not a valid regular expression"), (5, "exclude_modules must be")],
)  # fmt: skip
def test_bad_exclude_modules_are_refused_and_change_nothing(exclude, message):
    model = TinyViT()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        inject(model, ["query", "value"], rank=2, num_basis=8, seed=3, exclude_modules=exclude)
    assert snapshot(model) == before


@pytest.mark.parametrize("targets", [["blocks.0.query"], ["query"]])
def test_a_module_registered_under_two_names_is_refused_and_changes_nothing(targets):
    model = TinyViT()
    model.shared_query = model.blocks[0].query
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"target_modules: blocks\.0\.query is the same module as shared_query"):
        inject(model, targets, rank=2, num_basis=8, seed=0)
    assert snapshot(model) == before
