"""DistributedDataParallel (gloo, 2 CPU processes): every rank derives the same bases, and training
on two halves of a batch gives the coefficients single-process training on the whole batch gives."""

import torch
from adapter_models import TinyViT, coefficients
from ddp_training import batch, train, train_in_processes

from nola_kernels import adapted_modules, inject


def adapted_model():
    torch.manual_seed(0)  # the same base weights everywhere, as a loaded checkpoint gives
    model = TinyViT()
    inject(model, ["query", "value", "mlp.0", "head"], rank=2, num_basis=16, seed=11)
    return model


def seeds_and_coefficients(model):
    layers = adapted_modules(model)
    seeds = {n: (m.adapters["default"].seed_a, m.adapters["default"].seed_b) for n, m in layers.items()}
    return seeds, coefficients(model)


def test_ddp_matches_single_process_training(tmp_path):
    ranks = train_in_processes(adapted_model, seeds_and_coefficients, tmp_path)

    single = adapted_model()
    train(single, *batch())
    seeds, trained = seeds_and_coefficients(single)
    for rank_seeds, rank_coefficients in ranks:
        assert rank_seeds == seeds
        for name, value in trained.items():
            assert value.abs().max() > 0
            torch.testing.assert_close(rank_coefficients[name], value, rtol=1e-5, atol=1e-6)
