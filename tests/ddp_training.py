"""Data-parallel training on WORLD gloo CPU processes, for the tests that compare it with one
process training on the whole batch: each rank builds the model, trains it under
DistributedDataParallel on its slice of batch(), and saves what the test compares."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

WORLD, STEPS, BATCH = 2, 4, 16


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


def _worker(rank, init_file, build, result, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = build()
        x, y = batch()
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        train(DistributedDataParallel(model), x[local], y[local])
        torch.save(result(model), f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def train_in_processes(build, result, directory):
    """[result(model) of each rank] after training: `build` and `result` are module-level
    functions (the processes import them), `directory` a fresh folder for the rendezvous file and
    the results."""
    path = directory / "result"
    mp.spawn(_worker, args=(str(directory / "init"), build, result, str(path)), nprocs=WORLD, join=True)
    return [torch.load(f"{path}.{rank}") for rank in range(WORLD)]
