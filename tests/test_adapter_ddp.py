"""DistributedDataParallel (gloo, 2 CPU processes): every rank derives the same bases, and training
on two halves of a batch gives the coefficients single-process training on the whole batch gives."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from adapter_models import TinyViT, coefficients
from torch.nn.parallel import DistributedDataParallel

from nola_kernels import adapted_modules, inject

WORLD, STEPS, BATCH = 2, 4, 16


def adapted_model():
    torch.manual_seed(0)  # the same base weights everywhere, as a loaded checkpoint gives
    model = TinyViT()
    inject(model, ["query", "value", "mlp.0", "head"], rank=2, num_basis=16, seed=11)
    return model


def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 5, 12, generator=generator), torch.randint(0, 3, (BATCH,), generator=generator)


def train(model, x, y):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def seeds_and_coefficients(model):
    layers = adapted_modules(model)
    seeds = {n: (m.adapters["default"].seed_a, m.adapters["default"].seed_b) for n, m in layers.items()}
    return seeds, coefficients(model)


def worker(rank, init_file, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = adapted_model()
        x, y = batch()
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        train(DistributedDataParallel(model), x[local], y[local])
        torch.save(seeds_and_coefficients(model), f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process_training(tmp_path):
    results = tmp_path / "result"
    mp.spawn(worker, args=(str(tmp_path / "init"), str(results)), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{results}.{rank}") for rank in range(WORLD)]

    single = adapted_model()
    train(single, *batch())
    seeds, trained = seeds_and_coefficients(single)
    for rank_seeds, rank_coefficients in ranks:
        assert rank_seeds == seeds
        for name, value in trained.items():
            assert value.abs().max() > 0
            torch.testing.assert_close(rank_coefficients[name], value, rtol=1e-5, atol=1e-6)
