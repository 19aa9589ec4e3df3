"""Many adapters in one batch (nola_kernels/serving.py): inside row_adapters each batch row gets
its own adapter, as if it ran alone with that adapter active, on tiny Llama and GPT-2 models,
2-D and 3-D inputs, through generate()'s KV-cached decode; the segmented Triton kernel against a
float64 reference (in the interpreter here); refusals before any change."""

import pytest
import torch
from adapter_models import TinyViT, randomize_coefficients, snapshot, tiny_gpt2, tiny_llama
from numerics import rel_err, rounding_bound
from torch import nn

import nola_kernels
from nola_kernels import NOLALinear, adapted_modules, inject, row_adapters, serving, set_active_adapter
from nola_kernels.adapters.config import AdapterConfig

MODELS = {
    "gpt2": (tiny_gpt2, ["c_attn", "c_proj", "c_fc"], ["c_fc"]),
    "llama": (tiny_llama, ["q_proj", "v_proj", "down_proj"], ["down_proj"]),
}
# "a" and "c" share a master seed (one basis family per module, mixed together), "b" has another
# rank, "d" adapts only some modules.
ADAPTERS = {
    "a": dict(rank=2, num_basis=16, num_basis_b=12, seed=7),
    "b": dict(rank=3, num_basis=20, seed=8),
    "c": dict(rank=2, num_basis=16, num_basis_b=12, seed=7),
}


def served_model(kind):
    make, targets, partial = MODELS[kind]
    model = make()
    for name, settings in ADAPTERS.items():
        inject(model, targets, adapter_name=name, **settings)
        randomize_coefficients(model, name)
    inject(model, partial, adapter_name="d", rank=2, num_basis=8, seed=9)
    randomize_coefficients(model, "d")
    return model


def each_row_alone(model, rows, run):
    """run(row index) for each row with its adapter active, concatenated along dimension 0."""
    outputs = []
    for index, name in enumerate(rows):
        set_active_adapter(model, name)
        outputs.append(run(index))
    return torch.cat(outputs)


def close(value, reference, *lengths):
    return rel_err(value, reference.double()) < 2 * rounding_bound(torch.float32, *lengths)


ROWS = [
    ["a", None, "b", "a", "c", "d"],
    ["d", "c", "c", None, "b", "a"],
    ["b"],
    [None, None],
    ["a", "b", "c", "d"],
]


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("rows", ROWS, ids=lambda rows: "-".join(str(r) for r in rows))
def test_each_row_gets_its_own_adapter(kind, rows):
    model = served_model(kind)
    ids = torch.randint(0, 64, (len(rows), 7))
    with torch.no_grad():
        with row_adapters(model, rows):
            served = model(ids).logits
        alone = each_row_alone(model, rows, lambda i: model(ids[i : i + 1]).logits)
    assert close(served, alone, 32, 48, 32, 32, 48, 32)


@pytest.mark.parametrize("kind", MODELS)
def test_generate_keeps_each_rows_adapter_through_the_decode(kind):
    model = served_model(kind)
    rows = ["a", "d", None, "b", "c"]
    ids = torch.randint(1, 64, (len(rows), 5))
    settings = dict(
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        with row_adapters(model, rows):
            served = model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
        alone = [None] * len(rows)
        for i, name in enumerate(rows):
            set_active_adapter(model, name)
            alone[i] = model.generate(
                ids[i : i + 1], attention_mask=torch.ones_like(ids[i : i + 1]), **settings
            )
    assert torch.equal(served.sequences, torch.cat([run.sequences for run in alone]))
    for step, scores in enumerate(served.scores):
        reference = torch.cat([run.scores[step] for run in alone])
        finite = torch.isfinite(reference)  # min_new_tokens sets the end token's score to -inf
        assert torch.equal(torch.isfinite(scores), finite)
        assert close(scores[finite], reference[finite], 32, 48, 32, 32, 48, 32)


def test_beam_search_rows_repeated_in_place_keep_their_adapter():
    model = served_model("gpt2")
    rows = ["a", "b"]
    ids = torch.randint(1, 64, (len(rows), 4))
    settings = dict(max_new_tokens=4, min_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        with row_adapters(model, rows):
            served = model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
        alone = []
        for i, name in enumerate(rows):
            set_active_adapter(model, name)
            alone.append(
                model.generate(ids[i : i + 1], attention_mask=torch.ones_like(ids[i : i + 1]), **settings)
            )
    assert torch.equal(served, torch.cat(alone))


def layer_with_adapters():
    layer = NOLALinear(nn.Linear(24, 20), seed_a=1, seed_b=2, rank=4, num_basis=32, adapter_name="a").eval()
    layer.add_adapter("b", AdapterConfig(rank=2, num_basis=16, num_basis_b=8), 1, 2)
    layer.add_adapter("c", AdapterConfig(rank=4, num_basis=32), 1, 2)  # a's family
    for adapter in layer.adapters.values():
        adapter.requires_grad_(False)
        with torch.no_grad():
            adapter.alpha.normal_()
            adapter.beta.normal_()
    return layer


def layer_alone(layer, rows, x):
    """The layer on each row's share of dimension 0, that row's adapter active."""
    per_row = x.shape[0] // len(rows)
    outputs = []
    for index, name in enumerate(rows):
        layer.set_active(name)
        outputs.append(layer(x[index * per_row : (index + 1) * per_row]))
    return torch.cat(outputs)


@pytest.mark.parametrize(
    "shape",
    [(5, 24), (10, 24), (5, 3, 24), (10, 2, 3, 24)],
    ids=["2d-row-per-token", "2d-two-tokens-per-row", "3d", "4d-repeated"],
)
@pytest.mark.parametrize("kernel", [False, True], ids=["torch", "triton"])
def test_a_layer_maps_dimension_0_to_rows(shape, kernel, monkeypatch):
    if kernel:
        pytest.importorskip("triton")
        monkeypatch.setattr(serving, "uses_kernel", lambda x: True)
    layer = layer_with_adapters()
    rows = ["c", "a", None, "b", "a"]
    x = torch.randn(shape)
    with torch.no_grad():
        with row_adapters(layer, rows):
            served = layer(x)
        alone = layer_alone(layer, rows, x)
    assert served.shape == alone.shape
    assert close(served, alone, 24, 4)


def test_rows_whose_adapters_all_differ_and_rows_that_share_one():
    layer = layer_with_adapters()
    x = torch.randn(3, 4, 24)
    with torch.no_grad():
        for rows in (["a", "b", "c"], ["b", "b", "b"]):
            with row_adapters(layer, rows):
                served = layer(x)
            assert close(served, layer_alone(layer, rows, x), 24, 4)


def test_the_distinct_adapters_are_mixed_once_and_then_cached(monkeypatch):
    layer = layer_with_adapters()
    mixed = []
    original = nola_kernels.adapters.families.mix_family

    def counting(family, members):
        mixed.append(len(members))
        return original(family, members)

    monkeypatch.setattr(nola_kernels.adapters.families, "mix_family", counting)
    x = torch.randn(4, 2, 24)
    with torch.no_grad(), row_adapters(layer, ["a", "c", "b", "a"]):
        layer(x)
        # A: a and c together (one family), b alone; B: the same groups.
        assert sorted(mixed) == [1, 1, 2, 2]
        layer(x)
        assert len(mixed) == 4


def test_trainable_coefficients_get_the_gradients_of_their_rows():
    layer = layer_with_adapters()
    for adapter in layer.adapters.values():
        adapter.requires_grad_(True)
    rows = ["a", "b", "a"]
    x = torch.randn(3, 4, 24)
    with row_adapters(layer, rows):
        layer(x).square().sum().backward()
    served = {
        name: adapter.alpha.grad.clone()
        for name, adapter in layer.adapters.items()
        if adapter.alpha.grad is not None
    }
    layer.zero_grad()
    layer_alone(layer, rows, x).square().sum().backward()
    assert served.keys() == {"a", "b"}
    for name, grad in served.items():
        assert close(grad, layer.adapters[name].alpha.grad, 24, 4, 20, 32)


KERNEL_CASES = [
    *(("cpu", dtype) for dtype in (torch.float32, torch.float16)),
    *(
        pytest.param("cuda", dtype, marks=pytest.mark.gpu)
        for dtype in (torch.float32, torch.float16, torch.bfloat16)
    ),
]


@pytest.mark.parametrize("device, dtype", KERNEL_CASES)
@pytest.mark.parametrize("rank", [3, 8, 20])
def test_the_segmented_kernel_matches_the_float64_reference(device, dtype, rank):
    pytest.importorskip("triton")
    from nola_kernels.triton_kernels.segmented import Segments, segmented_delta

    tokens, in_features, out_features, adapters = 37, 70, 90, 4
    x = torch.randn(tokens, in_features).to(dtype)
    a = (torch.randn(adapters, rank, in_features) / in_features**0.5).to(dtype)
    b = torch.randn(adapters, out_features, rank).to(dtype)
    slots = torch.randint(-1, adapters - 1, (tokens,))  # the last adapter gets no token
    add_to = torch.randn(tokens, out_features).to(dtype)
    on = [t.to(device) for t in (x, a, b, slots, add_to)]
    out = segmented_delta(*on[:3], Segments.of(on[3], adapters), on[4]).cpu()
    reference = add_to.double().clone()
    for s in range(adapters):
        rows = slots == s
        reference[rows] += (x[rows].double() @ a[s].double().T) @ b[s].double().T
    assert out.dtype == dtype and out.shape == add_to.shape
    assert torch.equal(out[slots < 0], add_to[slots < 0])
    assert rel_err(out, reference) < 4 * rounding_bound(dtype, in_features, rank, 2)


def test_segments_group_tokens_by_adapter():
    from nola_kernels.triton_kernels.segmented import Segments

    segments = Segments.of(torch.tensor([2, -1, 0, 2, 0, -1, 2]), 4)
    assert segments.tokens.tolist()[2:] == [2, 4, 0, 3, 6]
    assert segments.starts.tolist() == [2, 4, 4, 7] and segments.counts.tolist() == [2, 0, 3, 0]


def test_refusals_name_the_argument_and_change_nothing():
    model = served_model("gpt2")
    before = snapshot(model)
    cases = [
        (TypeError, "adapters", "a"),
        (TypeError, "adapters", {"a": 1}),
        (ValueError, "empty", []),
        (KeyError, r"adapters\[1\].*'nope'", ["a", "nope"]),
        (TypeError, r"adapters\[0\]", [3]),
        (ValueError, r"adapters\[2\]", ["a", "b", "x.y"]),
    ]
    for error, message, rows in cases:
        with pytest.raises(error, match=message):
            with row_adapters(model, rows):
                pass
    with pytest.raises(TypeError, match="model"):
        with row_adapters("model", ["a"]):
            pass
    assert snapshot(model) == before
    assert all(layer.row_selection is None for layer in adapted_modules(model).values())


def test_a_merged_adapter_and_a_nested_block_are_refused():
    model = served_model("llama")
    set_active_adapter(model, "a")
    nola_kernels.merge_adapter(model)
    with pytest.raises(RuntimeError, match="merged"):
        with row_adapters(model, ["a", "b"]):
            pass
    nola_kernels.unmerge_adapter(model)
    with row_adapters(model, ["a", "b"]):
        with pytest.raises(RuntimeError, match="nest"):
            with row_adapters(model, ["b", "a"]):
                pass
        assert all(layer.row_selection is not None for layer in adapted_modules(model).values())
    assert all(layer.row_selection is None for layer in adapted_modules(model).values())


def test_merging_inside_a_block_is_refused_and_changes_nothing():
    # Rows run their own adapters inside the block: a folded update would be applied twice.
    model = served_model("llama")
    set_active_adapter(model, "a")
    before = snapshot(model)
    with row_adapters(model, ["a", "b"]):
        for fold in (nola_kernels.merge_adapter, nola_kernels.merge_and_unload):
            with pytest.raises(RuntimeError, match="inside a row_adapters block"):
                fold(model)
        layer = next(iter(adapted_modules(model).values()))
        with pytest.raises(RuntimeError, match="inside a row_adapters block"):
            layer.merge()
    assert snapshot(model) == before


def test_an_input_whose_dimension_0_does_not_fit_the_rows_is_refused():
    layer = layer_with_adapters()
    with torch.no_grad(), row_adapters(layer, ["a", "b", "c"]):
        with pytest.raises(ValueError, match=r"3 rows \(len\(adapters\)\).*\(4, 24\)"):
            layer(torch.randn(4, 24))


def test_dropout_in_training_mode_is_refused():
    model = TinyViT()
    inject(model, ["query"], rank=2, num_basis=8, seed=1, dropout=0.1)
    with torch.no_grad(), row_adapters(model, ["default"]):
        with pytest.raises(RuntimeError, match="eval"):
            model(torch.randn(1, 3, 12))
        model.eval()
        model(torch.randn(1, 3, 12))


def test_a_model_with_modules_trained_whole_is_refused():
    model = served_model("llama")
    inject(model, ["q_proj"], adapter_name="with_head", modules_to_save=["lm_head"], rank=2, num_basis=8, seed=5)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"trains \['lm_head'\] whole"):
        with row_adapters(model, ["a", "with_head"]):
            pass
    assert snapshot(model) == before
