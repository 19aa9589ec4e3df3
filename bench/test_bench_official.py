"""The drop-in for the official NOLA layers (nola_kernels.compat.official) against the official
way (tests/official_layers.py: the whole basis drawn in forward and again in backward), on the
CPU: one LoRA(use_nola=True) forward + backward, time and peak memory.

- official: torch's CPU generator, the whole basis (what the official code does on the CPU);
- dropin-generator: the drop-in's CPU default, the same numbers, also drawn whole;
- dropin-H200: the drop-in reproducing an H200's numbers through the ops' official family
  (nola_mix / nola_project; on the CPU the PyTorch path, blocks of its chunk budget);
- dropin-H200-blocks: the same numbers from the drop-in's own block emulation (block_entries
  given: BLOCK_ENTRIES["cpu"] entries at a time), what dropin-H200 ran before the family.

On one thread: on a 2-core machine shared with other jobs, two threads' BLAS calls wait on each
other and the timings say more about the neighbours than about the code.

Run with `python -m pytest bench/test_bench_official.py --benchmark-only`; each case's peak
bytes are in its extra_info (`--benchmark-json`) and printed.
"""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from workloads import torch_threads

from nola_kernels.compat.official import BLOCK_ENTRIES, LoRA
from nola_kernels.memory import peak_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from official_layers import Draw, OfficialLoRA

ROUNDS = 3


@dataclasses.dataclass(frozen=True)
class Case:
    label: str
    features: int  # in = out
    rank: int
    k: int
    tokens: int


CASES = [Case("gpt2-medium-qv", 1024, 8, 512, 256), Case("small", 256, 4, 128, 64)]
IMPLEMENTATIONS = {
    "official": lambda c: OfficialLoRA(c.features, c.features, use_nola=True, num_basis=c.k, rank=c.rank, draw=Draw()),
    "dropin-generator": lambda c: LoRA(c.features, c.features, use_nola=True, num_basis=c.k, rank=c.rank),
    "dropin-H200": lambda c: LoRA(c.features, c.features, use_nola=True, num_basis=c.k, rank=c.rank, layout="H200"),
    "dropin-H200-blocks": lambda c: LoRA(
        c.features, c.features, use_nola=True, num_basis=c.k, rank=c.rank, layout="H200",
        block_entries=BLOCK_ENTRIES["cpu"],
    ),
}


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_official_forward_backward(benchmark, capsys, case, implementation):
    torch.manual_seed(0)
    module = IMPLEMENTATIONS[implementation](case)
    with torch.no_grad():
        for layer in (module.lora_A, module.lora_B):
            layer.coefficients.normal_()
            layer.weight.normal_(0, 0.02)
    x = torch.randn(case.tokens, case.features)
    grad = torch.randn(case.tokens, case.features)

    def step():
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)
        return module.lora_A.coefficients.grad

    benchmark.group = f"cpu {case.label} forward_backward"
    with torch_threads(1):
        computed = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1, iterations=1)
        _, peak_bytes = peak_memory(step, "cpu")
    assert torch.isfinite(computed).all()
    info = dict(implementation=implementation, **dataclasses.asdict(case), dtype="float32", threads=1)
    info["peak_bytes"] = peak_bytes
    if benchmark.stats is not None:
        info["median_s"] = benchmark.stats.stats.median
    benchmark.extra_info.update(info)
    with capsys.disabled():
        median = f"{info['median_s'] * 1e3:9.1f} ms" if "median_s" in info else "untimed"
        print(f"\n{case.label:16} {implementation:18} {median}  peak {peak_bytes / 2**20:8.1f} MiB")
