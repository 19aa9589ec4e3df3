"""Grouped generation over a whole model (nola_kernels.group_generation): the forward and the
coefficient gradients equal the per-layer path's against a float64 reference; the number of
generation launches per step does not grow with the depth; the per-layer path stays reachable;
and it keeps working with DDP, gradient checkpointing, torch.compile and generate()."""

import copy
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import torch
from adapter_models import TinyViT, coefficients, randomize_coefficients, snapshot
from ddp_training import batch, train, train_in_processes
from numerics import rel_err, rounding_bound

from nola_kernels import (
    adapted_modules,
    delete_adapter,
    group_generation,
    inject,
    merge_and_unload,
    set_active_adapter,
    unload,
)
from nola_kernels.adapters.grouping import is_grouped

GENERATION_OPS = ("mix", "project", "mix_grouped", "project_grouped")
WIDTH, TOKENS, K = 32, 8, 16
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]  # every linear: 4 shapes, so 4 families per factor
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def transformers():
    # Imported here, not by the module: the DDP processes import this module and need only torch.
    return pytest.importorskip("transformers")


def gpt2(layers=2, seed=0):
    config = transformers().GPT2Config(
        vocab_size=64, n_positions=32, n_embd=WIDTH, n_layer=layers, n_head=2, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers().GPT2LMHeadModel(config)


def llama(seed=0):
    config = transformers().LlamaConfig(
        vocab_size=64, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers().LlamaForCausalLM(config)


def adapted(build, targets, grouped, dtype=torch.float32, **options):
    model = build(**options).to(dtype)
    inject(model, targets, rank=2, num_basis=K, seed=5, share_basis=True, lora_alpha=3.0)
    randomize_coefficients(model)
    if grouped:
        group_generation(model)
    return model


def tokens(count=TOKENS, seed=1):
    return torch.randint(0, 64, (2, count), generator=torch.Generator().manual_seed(seed))


def step(model, ids):
    """One forward + backward of the language-model loss: (logits, {coefficient: gradient})."""
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


class Launches:
    """Counts the generation ops (nola_kernels::mix, project, mix_grouped, project_grouped) that
    run inside the block, forward and backward, by the profiler's record of each dispatched op."""

    def __enter__(self):
        self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.profile.__enter__()
        return self

    def __exit__(self, *exc):
        self.profile.__exit__(*exc)
        events = Counter(event.name for event in self.profile.events())
        self.counts = {op: events[f"nola_kernels::{op}"] for op in GENERATION_OPS}


def counted_step(model, ids):
    with Launches() as launches:
        step(model, ids)
    return launches.counts


@pytest.mark.parametrize("build, targets", [(gpt2, GPT2_TARGETS), (llama, LLAMA_TARGETS)], ids=["gpt2", "llama"])
def test_forward_and_gradients_equal_the_per_layer_paths_against_float64(build, targets):
    ids = tokens()
    reference_logits, reference = step(adapted(build, targets, False, torch.float64), ids)
    per_layer_logits, per_layer = step(adapted(build, targets, False), ids)
    grouped_logits, grouped = step(adapted(build, targets, True), ids)
    floor = rounding_bound(torch.float32, K, 4 * WIDTH, 2 * TOKENS)
    bound = 2 * rel_err(per_layer_logits, reference_logits) + floor
    assert rel_err(grouped_logits, reference_logits) <= bound
    assert set(grouped) == set(reference) and len(reference) > 0
    for name, value in reference.items():
        assert value.abs().max() > 0, name
        assert rel_err(grouped[name], value) <= 2 * rel_err(per_layer[name], value) + floor, name

    # In float64 both paths compute the same sums: only float64 rounding apart.
    grouped64_logits, grouped64 = step(adapted(build, targets, True, torch.float64), ids)
    bound64 = rounding_bound(torch.float64, K, 4 * WIDTH, 2 * TOKENS)
    assert rel_err(grouped64_logits, reference_logits) <= bound64
    for name, value in reference.items():
        assert rel_err(grouped64[name], value) <= bound64, name


def test_generation_launches_do_not_grow_with_the_number_of_layers():
    ids = tokens()
    grouped = {layers: counted_step(adapted(gpt2, GPT2_TARGETS, True, layers=layers), ids) for layers in (2, 12)}
    families = 2 * 4  # A and B of each of the 4 shapes
    for counts in grouped.values():
        assert counts == {"mix": 0, "project": 0, "mix_grouped": families, "project_grouped": families}
    per_layer = counted_step(adapted(gpt2, GPT2_TARGETS, False, layers=12), ids)
    assert per_layer == {"mix": 2 * 48, "project": 2 * 48, "mix_grouped": 0, "project_grouped": 0}


def test_a_layer_called_on_its_own_and_no_grad_forwards_run_the_per_layer_path():
    model = adapted(gpt2, GPT2_TARGETS, True)
    ids = tokens()
    step(model, ids)
    layer = model.transformer.h[0].attn.c_attn
    x = torch.randn(2, TOKENS, WIDTH)
    expected = layer.base_layer(x) + layer.adapters["default"].delta(x, "torch")
    with Launches() as launches:
        out = layer(x)
        out.sum().backward()
    assert launches.counts == {"mix": 2, "project": 2, "mix_grouped": 0, "project_grouped": 0}
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    with Launches() as launches, torch.no_grad():
        model(ids)
    assert launches.counts == {"mix": 16, "project": 0, "mix_grouped": 0, "project_grouped": 0}


def test_a_forward_that_raises_ends_the_pass():
    model = adapted(gpt2, GPT2_TARGETS, True)
    with pytest.raises(IndexError):
        model(torch.full((1, 4), 999))  # beyond the vocabulary: the embedding raises
    layer = model.transformer.h[0].mlp.c_fc
    with Launches() as launches:
        layer(torch.randn(3, WIDTH))
    assert launches.counts["mix"] == 2 and launches.counts["mix_grouped"] == 0


def test_merged_inactive_and_deleted_adapters():
    ids = tokens()
    grouped, per_layer = adapted(gpt2, GPT2_TARGETS, True), adapted(gpt2, GPT2_TARGETS, False)
    for model in (grouped, per_layer):  # merge one layer: it leaves its families
        model.transformer.h[1].attn.c_attn.merge()
    # c_attn's families keep layer 0 alone: it runs its own path; the other 6 families group.
    assert counted_step(grouped, ids) == {"mix": 2, "project": 2, "mix_grouped": 6, "project_grouped": 6}
    grouped_grads, per_layer_grads = step(grouped, ids)[1], step(per_layer, ids)[1]
    for name, value in per_layer_grads.items():
        torch.testing.assert_close(grouped_grads[name], value, rtol=1e-4, atol=1e-6)

    base = gpt2()
    with torch.no_grad():
        base_logits = base(ids).logits
    for model in (grouped, per_layer):
        model.transformer.h[1].attn.c_attn.unmerge()
    set_active_adapter(grouped, None)
    with Launches() as launches:
        logits = grouped(ids).logits
    assert sum(launches.counts.values()) == 0
    torch.testing.assert_close(logits, base_logits, rtol=1e-5, atol=1e-5)

    set_active_adapter(grouped, "default")
    delete_adapter(grouped, "default")
    with Launches() as launches:
        logits = grouped(ids).logits
    assert sum(launches.counts.values()) == 0
    torch.testing.assert_close(logits, base_logits, rtol=1e-5, atol=1e-5)


def test_two_named_adapters_of_one_master_seed_share_the_families():
    model = gpt2()
    for name in ("first", "second"):
        inject(model, GPT2_TARGETS, rank=2, num_basis=K, seed=5, share_basis=True, adapter_name=name)
        randomize_coefficients(model, name)
    reference = copy.deepcopy(model)
    group_generation(model)
    ids = tokens()
    for name in ("first", "second"):
        set_active_adapter(model, name)
        set_active_adapter(reference, name)
        counts = counted_step(model, ids)
        assert counts["mix"] == 0 and counts["mix_grouped"] == 8
        grads, expected = step(model, ids)[1], step(reference, ids)[1]
        assert all(name in key for key in grads)
        for key, value in expected.items():
            torch.testing.assert_close(grads[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing(reentrant):
    """Non-reentrant: the recomputed blocks take the pass's factors and the backward projects once
    per family. Reentrant: each block's recompute runs its own backward through the shared
    factors, which projects every family once per block (zeros for the other blocks' rows): the
    gradients stay the same by linearity."""
    ids = tokens()
    layers = 3
    expected = step(adapted(gpt2, GPT2_TARGETS, False, layers=layers), ids)[1]
    model = checkpointed(adapted(gpt2, GPT2_TARGETS, True, layers=layers), reentrant)
    counts = counted_step(model, ids)
    projections = 8 * layers if reentrant else 8
    assert counts == {"mix": 0, "project": 0, "mix_grouped": 8, "project_grouped": projections}
    grads = step(model, ids)[1]
    for name, value in expected.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-6)


def checkpointed(model, reentrant):
    model.train().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()  # a reentrant checkpoint needs an input that takes a gradient
    return model


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_two_checkpointed_forwards_before_one_backward(reentrant):
    """Both passes' blocks are recomputed with the factors the layers hold in the backward, the
    second pass's (mixed from the same coefficients); reentrant, each recompute's backward of its
    own runs through them, once per pass."""
    first, second = tokens(), tokens(seed=2)

    def gradients(model):
        (model(first, labels=first).loss + model(second, labels=second).loss).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    expected = gradients(adapted(gpt2, GPT2_TARGETS, False, layers=3))
    grads = gradients(checkpointed(adapted(gpt2, GPT2_TARGETS, True, layers=3), reentrant))
    assert grads.keys() == expected.keys() and len(expected) > 0
    for name, value in expected.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-6)


def test_generate_matches_the_per_layer_model():
    ids = tokens(4)
    grouped, per_layer = adapted(gpt2, GPT2_TARGETS, True).eval(), adapted(gpt2, GPT2_TARGETS, False).eval()
    step(grouped, ids)  # a training step first: its factors must not leak into decoding
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(grouped.generate(ids, **options), per_layer.generate(ids, **options), rtol=0, atol=0)


def test_a_copy_of_the_model_takes_none_of_its_factors():
    model = adapted(gpt2, GPT2_TARGETS, True)
    model(tokens())  # the graph is still alive: deepcopy would refuse its tensors
    twin = copy.deepcopy(model)
    assert all(layer.grouped is None for layer in adapted_modules(twin).values())
    assert is_grouped(twin)
    torch.testing.assert_close(step(twin, tokens())[1], step(model, tokens())[1], rtol=1e-5, atol=1e-7)


def test_switching_on_and_off_and_refusals():
    model = adapted(gpt2, GPT2_TARGETS, False)
    group_generation(model)
    group_generation(model)
    assert len(model._forward_pre_hooks) == len(model._forward_hooks) == 1
    group_generation(model, enabled=False)
    assert not is_grouped(model) and counted_step(model, tokens())["mix_grouped"] == 0

    before = snapshot(model)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        group_generation(model, enabled="yes")
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        group_generation("model")
    plain = gpt2()
    with pytest.raises(ValueError, match="model has no NOLA layers"):
        group_generation(plain)
    assert not is_grouped(plain) and snapshot(model) == before


def plain_logits(model, ids):
    """The logits of a forward with grad enabled, where a left-over grouping hook would run."""
    return model(ids).logits.detach()


def hooked_modules(model):
    return [name for name, module in model.named_modules() if module._forward_pre_hooks or module._forward_hooks]


@pytest.mark.parametrize("remove", [unload, merge_and_unload], ids=["unload", "merge_and_unload"])
def test_unloading_removes_the_grouping_and_it_can_be_applied_again(remove):
    ids = tokens()
    model = adapted(gpt2, GPT2_TARGETS, True)
    group_generation(model.transformer)  # a module inside the model grouped too: also removed
    step(model, ids)
    layers = list(adapted_modules(model).values())
    assert all(layer.grouped is not None for layer in layers)
    # unload gives back the base model itself; merge_and_unload the per-layer model merged.
    expected = plain_logits(gpt2() if remove is unload else merge_and_unload(adapted(gpt2, GPT2_TARGETS, False)), ids)

    assert remove(model) is model
    assert hooked_modules(model) == [] and not is_grouped(model) and not is_grouped(model.transformer)
    assert all(layer.grouped is None for layer in layers)  # the dropped layers let go of their factors
    with Launches() as launches:
        logits = plain_logits(model, ids)
    assert sum(launches.counts.values()) == 0
    assert torch.equal(logits, expected)

    inject(model, GPT2_TARGETS, rank=2, num_basis=K, seed=5, share_basis=True)
    randomize_coefficients(model)
    group_generation(model)
    assert is_grouped(model) and len(model._forward_pre_hooks) == len(model._forward_hooks) == 1
    assert counted_step(model, ids) == {"mix": 0, "project": 0, "mix_grouped": 8, "project_grouped": 8}


def test_deleting_the_last_adapter_removes_the_grouping():
    ids = tokens()
    model = adapted(gpt2, GPT2_TARGETS, True)
    group_generation(model.transformer)  # a module inside the model grouped too: also removed
    step(model, ids)
    layers = list(adapted_modules(model).values())
    before = snapshot(model)
    with pytest.raises(KeyError, match="no adapter named 'other'"):
        delete_adapter(model, "other")
    assert snapshot(model) == before and is_grouped(model) and is_grouped(model.transformer)

    delete_adapter(model, "default")
    assert not adapted_modules(model) and hooked_modules(model) == []
    assert all(layer.grouped is None for layer in layers)  # the dropped layers let go of their factors
    with Launches() as launches:
        logits = plain_logits(model, ids)
    assert sum(launches.counts.values()) == 0
    assert torch.equal(logits, plain_logits(gpt2(), ids))


def test_deleting_one_of_two_adapters_keeps_the_grouping_of_the_other():
    ids = tokens()
    model = gpt2()
    inject(model, GPT2_TARGETS, rank=2, num_basis=K, seed=5, share_basis=True, adapter_name="first")
    inject(model, ["c_attn"], rank=2, num_basis=K, seed=5, share_basis=True, adapter_name="second")
    for name in ("first", "second"):
        randomize_coefficients(model, name)
    reference = copy.deepcopy(model)
    group_generation(model)
    set_active_adapter(model, "first")
    step(model, ids)
    attention = [model.transformer.h[block].attn.c_attn for block in (0, 1)]

    delete_adapter(model, "first")  # c_proj and c_fc go back to their base layers; c_attn keeps "second"
    delete_adapter(reference, "first")
    assert list(adapted_modules(model).values()) == attention and is_grouped(model)
    assert all(layer.grouped is None for layer in attention)  # the deleted adapter's factors are dropped
    set_active_adapter(model, "second")
    set_active_adapter(reference, "second")
    assert counted_step(model, ids) == {"mix": 0, "project": 0, "mix_grouped": 2, "project_grouped": 2}
    grads, expected = step(model, ids)[1], step(reference, ids)[1]
    assert grads.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "remove, merged", [(unload, True), (merge_and_unload, False)], ids=["unload", "merge_and_unload"]
)
def test_a_refused_unload_keeps_the_grouping(remove, merged):
    if torch.cuda.is_available():
        pytest.skip("the CUDA backend runs here")
    model = adapted(gpt2, GPT2_TARGETS, True)
    step(model, tokens())
    layer = model.transformer.h[1].attn.c_attn
    if merged:  # unload checks the layers it must unmerge, merge_and_unload the ones it must merge
        layer.merge()
    layer.backend = "cuda"  # unavailable: the fold is refused before anything changes
    before, factors = snapshot(model), [layer.grouped for layer in adapted_modules(model).values()]
    with pytest.raises(RuntimeError, match=r"transformer\.h\.1\.attn\.c_attn: backend 'cuda' cannot run"):
        remove(model)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        remove("model")
    assert snapshot(model) == before and is_grouped(model)
    assert [layer.grouped for layer in adapted_modules(model).values()] == factors


# DDP: two gloo processes on halves of a batch give the coefficients one process gives on the
# whole batch with the per-layer path (ddp_training.py's batch and training loop).
def vit(grouped=True):
    torch.manual_seed(0)
    model = TinyViT()
    inject(model, ["query", "value", "mlp.0"], rank=2, num_basis=K, seed=11, share_basis=True)
    randomize_coefficients(model)
    if grouped:
        group_generation(model)
    return model


def test_ddp_matches_single_process_per_layer_training(tmp_path):
    ranks = train_in_processes(vit, coefficients, tmp_path)
    single = vit(grouped=False)
    train(single, *batch())
    expected = coefficients(single)
    for trained in ranks:
        assert trained.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6)


COMPILE_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from torch import nn
    import nola_kernels

    def model():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
        nola_kernels.inject(net, ["0", "2", "4"], rank=2, num_basis=8, seed=3, share_basis=True)
        with torch.no_grad():
            for layer in nola_kernels.adapted_modules(net).values():
                layer.adapters["default"].alpha.normal_()
                layer.adapters["default"].beta.normal_()
        nola_kernels.group_generation(net)
        return net

    def grads(net):
        return [p.grad.clone() for p in net.parameters() if p.requires_grad]

    x = torch.randn(5, 8)
    eager, compiled = model(), model()
    eager(x).square().sum().backward()
    step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    out = step(x)
    out.square().sum().backward()
    explained = torch._dynamo.explain(model())(x)
    print("REPORT " + json.dumps({
        "forward": (out - eager(x)).abs().max().item(),
        "grads": max((a - b).abs().max().item() for a, b in zip(grads(eager), grads(compiled))),
        "graphs": explained.graph_count,
        "breaks": explained.graph_break_count,
        "ops": sorted({str(node.target) for graph in explained.graphs for node in graph.graph.nodes
                       if "nola_kernels" in str(node.target)}),
    }))
    """
)


def test_compile_fullgraph_matches_eager():
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT], capture_output=True, text=True, env=dict(os.environ), timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    report = json.loads(line.removeprefix("REPORT "))
    assert report["forward"] <= 1e-5 and report["grads"] <= 1e-5
    assert (report["graphs"], report["breaks"]) == (1, 0)
    assert report["ops"] == ["nola_kernels.mix_grouped.default"]


def test_a_peft_model_groups_too():
    pytest.importorskip("peft")
    from peft import get_peft_model

    from nola_kernels.peft import NolaConfig

    config = NolaConfig(r=2, num_basis=K, seed=5, share_basis=True, target_modules=GPT2_TARGETS)
    model = get_peft_model(gpt2(), config)
    randomize_coefficients(model)
    reference = copy.deepcopy(model)
    group_generation(model)
    ids = tokens()
    assert counted_step(model, ids) == {"mix": 0, "project": 0, "mix_grouped": 8, "project_grouped": 8}
    grads, expected = step(model, ids)[1], step(reference, ids)[1]
    for name, value in expected.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-6)
