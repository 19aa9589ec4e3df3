"""FSDP2 (fully_shard) and FSDP1 (FullyShardedDataParallel) with 2 gloo CPU processes: an injected
tiny Llama trains a few steps on two halves of a batch and its coefficients match single-process
training on the whole batch; with FSDP1's transformer-layer wrap policy the coefficients lie in
the decoder layers' units (use_orig_params=True: a unit then mixes frozen weights and trainable
coefficients, which FSDP1 refuses otherwise); the adapter saved from the sharded model, with its
full parameters gathered, loads into a fresh model bit for bit."""

import contextlib
import functools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from adapter_models import coefficients, randomize_coefficients, tiny_llama

from nola_kernels import adapted_modules, inject, load_adapter, save_adapter

transformers = pytest.importorskip("transformers")

WORLD, STEPS, BATCH, TOKENS = 2, 3, 4, 8
TARGETS = ["q_proj", "v_proj", "down_proj"]


def adapted_model():
    model = tiny_llama()  # the same base weights on every rank, as a loaded checkpoint gives
    inject(model, TARGETS, rank=2, num_basis=16, seed=11)
    return model.train()


def batch():
    return torch.randint(0, 64, (BATCH, TOKENS), generator=torch.Generator().manual_seed(1))


def train(model, ids):
    # Every sequence has TOKENS - 1 targets, so the mean over half the batch, averaged over the
    # ranks, is the mean over the whole batch.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(STEPS):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


def fsdp2(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def fsdp1(model, use_orig_params=True):
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = functools.partial(
        transformer_auto_wrap_policy, transformer_layer_cls={transformers.models.llama.modeling_llama.LlamaDecoderLayer}
    )
    # On the CPU FSDP1 wants device_id named (without it, it looks for an accelerator).
    return FullyShardedDataParallel(
        model, auto_wrap_policy=policy, use_orig_params=use_orig_params, device_id=torch.device("cpu")
    )


def coefficients_in_inner_units(wrapped):
    """Whether every coefficient is a parameter of an FSDP1 unit below the root."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    inner = {
        id(p) for unit in FullyShardedDataParallel.fsdp_modules(wrapped) if unit is not wrapped for p in unit.parameters()
    }
    return all(id(p) in inner for n, p in wrapped.named_parameters() if ".adapters." in n)


@contextlib.contextmanager
def gathered(model):
    """The full parameters in place (a collective): FSDP1's summon_full_params; FSDP2 unshards
    every unit, then reshards."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    yield
    for unit in units:
        unit.reshard()


def model_coefficients(model):
    # FSDP1 puts its wrappers in the module names; the adapter's names are the model's own.
    return {n.replace("_fsdp_wrapped_module.", ""): v for n, v in coefficients(model).items()}


def train_and_save(model, ids, path):
    train(model, ids)
    with gathered(model):
        if dist.get_rank() == 0:
            save_adapter(model, path)
        return model_coefficients(model)


def worker(rank, init_file, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ids = batch()[rank * BATCH // WORLD : (rank + 1) * BATCH // WORLD]
        results = {"fsdp2": train_and_save(fsdp2(adapted_model()), ids, f"{out}.fsdp2.safetensors")}
        model = fsdp1(adapted_model())
        results["fsdp1_inner_units"] = coefficients_in_inner_units(model)
        results["fsdp1"] = train_and_save(model, ids, f"{out}.fsdp1.safetensors")
        try:
            fsdp1(adapted_model(), use_orig_params=False)
            results["fsdp1_flat_error"] = None
        except ValueError as error:
            results["fsdp1_flat_error"] = str(error)
        if rank == 0:
            torch.save(results, f"{out}.results")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    out = str(folder / "run")
    mp.spawn(worker, args=(str(folder / "init"), out), nprocs=WORLD, join=True)
    single = adapted_model()
    train(single, batch())
    return out, torch.load(f"{out}.results"), single


@pytest.mark.parametrize("kind", ["fsdp2", "fsdp1"])
def test_training_matches_a_single_process(runs, kind):
    _, results, single = runs
    expected = coefficients(single)
    assert results[kind].keys() == expected.keys()
    for name, value in expected.items():
        assert value.abs().max() > 0
        torch.testing.assert_close(results[kind][name], value, rtol=1e-5, atol=1e-6)


def test_the_wrap_policy_puts_the_coefficients_in_the_layer_units(runs):
    assert runs[1]["fsdp1_inner_units"]


def test_fsdp1_needs_use_orig_params(runs):
    # A decoder layer's unit holds frozen weights and trainable coefficients.
    assert "Must flatten tensors with uniform `requires_grad` when `use_orig_params=False`" in runs[1]["fsdp1_flat_error"]


@pytest.mark.parametrize("kind", ["fsdp2", "fsdp1"])
def test_the_adapter_saved_from_the_sharded_model_loads_bit_for_bit(runs, kind):
    out, results, _ = runs
    fresh = tiny_llama()
    load_adapter(fresh, f"{out}.{kind}.safetensors")
    loaded = coefficients(fresh)
    assert loaded.keys() == results[kind].keys()
    assert all(torch.equal(loaded[n], results[kind][n]) for n in loaded)


def test_saving_leaves_the_parameters_storage_resizable(tmp_path):
    # FSDP2 frees each gathered parameter by resizing its storage to 0 after a save.
    model = adapted_model()
    save_adapter(model, tmp_path / "adapter.safetensors")
    assert all(p.untyped_storage().resizable() for n, p in model.named_parameters() if ".adapters." in n)


def test_a_checkpoint_saved_through_a_wrapper_names_the_models_own_modules(tmp_path):
    # FSDP1 and torch.compile put a segment into module names ("_fsdp_wrapped_module",
    # "_orig_mod"): the file names the model's own, so the plain model loads it.
    model = adapted_model()
    randomize_coefficients(model)
    save_adapter(torch.compile(model), tmp_path / "adapter.safetensors")  # not run: nothing compiles
    fresh = tiny_llama()
    assert load_adapter(fresh, tmp_path / "adapter.safetensors") == list(adapted_modules(model))
    assert coefficients(fresh).keys() == coefficients(model).keys()
    assert all(torch.equal(coefficients(fresh)[n], v) for n, v in coefficients(model).items())
