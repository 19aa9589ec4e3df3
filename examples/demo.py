"""`make demo`: nola_matmul beside the naive baselines (time and peak memory), then a short
training of the NOLA coefficients on a toy regression."""

import math
import statistics
import time

import torch

from nola_kernels import SPEC_VERSION, chunk_budget, nola_basis, nola_matmul
from nola_kernels.memory import peak_memory
from nola_kernels.reference import naive_matmul, official_matmul

# GPT-2 medium attention projection (the official NOLA GPT-2 M setting: rank 8, k = l = 512).
IN = OUT = 1024
RANK, K, TOKENS = 8, 512, 512
SEEDS = dict(seed_a=1, seed_b=2)


def side_by_side():
    print(f"\n1. One forward + backward at in = out = {IN}, rank {RANK}, k = l = {K}, {TOKENS} tokens,")
    print(
        f"   float32 on the CPU ({torch.get_num_threads()} threads; chunk budget {chunk_budget() >> 20} MiB)\n"
    )
    x = torch.randn(TOKENS, IN)
    alpha, beta = torch.randn(K, requires_grad=True), torch.randn(K, requires_grad=True)
    shape = dict(rank=RANK, out_features=OUT, scaling=2.0, **SEEDS)
    outputs = {}
    print(f"   {'implementation':<38}{'median s':>10}{'peak MiB':>10}")
    for name, fn in [
        ("nola_matmul (basis never stored)", nola_matmul),
        ("naive: whole basis, then einsum", naive_matmul),
        ("official: torch RNG, whole basis", official_matmul),
    ]:

        def step(fn=fn):
            alpha.grad = beta.grad = None
            out = fn(x, alpha, beta, **shape)
            out.square().mean().backward()
            return out.detach()

        outputs[name], peak = peak_memory(step, "cpu")
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        print(f"   {name:<38}{statistics.median(times):>10.3f}{peak / 2**20:>10.1f}")
    ours, naive = list(outputs.values())[:2]
    relative = ((ours - naive).norm() / naive.norm()).item()
    print("\n   peak: tensor memory above the inputs, the output and the loss's own tensors included")
    print(f"   nola_matmul vs naive (same basis): relative difference {relative:.1e} (float32 rounding)")
    print("   (the official code draws other numbers: torch's RNG, which also differs between GPU models)")


def toy_regression():
    print("\n2. Training only alpha and beta (k = l = 64, rank 4) to fit a hidden NOLA update of a")
    print("   frozen 64 x 64 linear layer; a0 is generated from the seed (stream 1), b0 = 0.\n")
    torch.manual_seed(0)
    n_in = n_out = 64
    rank, k = 4, 64
    a0 = nola_basis(SEEDS["seed_a"], 1, (rank, n_in), stream=1)[0] / math.sqrt(n_in)
    shape = dict(rank=rank, out_features=n_out, a0=a0, scaling=1.0, **SEEDS)
    base = torch.nn.Linear(n_in, n_out).requires_grad_(False)
    true_alpha, true_beta = torch.randn(k), torch.randn(k)
    x = torch.randn(2048, n_in)
    with torch.no_grad():
        target = base(x) + nola_matmul(x, true_alpha, true_beta, **shape)
    alpha, beta = torch.zeros(k, requires_grad=True), torch.zeros(k, requires_grad=True)
    optimizer = torch.optim.Adam([alpha, beta], lr=0.05)
    print(f"   {'step':>6}{'mse':>12}")
    for step in range(301):
        loss = torch.nn.functional.mse_loss(base(x) + nola_matmul(x, alpha, beta, **shape), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"   {step:>6}{loss.item():>12.6f}")
    print(
        f"\n   trainable parameters: {alpha.numel() + beta.numel()} (a LoRA of rank {rank}: {rank * (n_in + n_out)})"
    )


if __name__ == "__main__":
    print(f"nola_kernels demo ({SPEC_VERSION}), torch {torch.__version__}")
    side_by_side()
    toy_regression()
