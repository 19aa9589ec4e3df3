"""The benchmark cases: shapes, the implementations of a LoRA-style delta, and their inputs."""

import contextlib
import functools
import math
from dataclasses import asdict, dataclass, field

import torch

from nola_kernels import group_generation, inject, nola_basis, nola_matmul
from nola_kernels.backends import get_backend, native_backends
from nola_kernels.lowrank import lowrank_delta
from nola_kernels.reference import naive_matmul, official_matmul
from nola_kernels.routing import lowrank_path


@dataclass(frozen=True)
class Shape:
    name: str
    in_features: int
    out_features: int
    rank: int
    k: int  # basis size of each factor (NOLA's k for A and l for B, equal here)
    tokens: int
    dtype: torch.dtype = torch.float32
    passes: tuple = field(default=("forward", "forward_backward"))
    threads: int | None = None  # torch.set_num_threads for the case (CPU); None leaves torch's default

    @property
    def label(self):
        """The name, with the thread count where the case sets one: gpt2-medium-1t."""
        return self.name if self.threads is None else f"{self.name}-{self.threads}t"

    def fields(self):
        """The shape as a flat dict, for reports."""
        values = {("shape" if key == "name" else key): value for key, value in asdict(self).items()}
        values["dtype"] = str(self.dtype).replace("torch.", "")
        del values["passes"]
        return values


GPU_PASSES = ("forward", "backward", "forward_backward", "layer")
SHAPES = {
    "cpu": [
        # On 1 thread and on both cores of this project's 2-core machine.
        *(Shape("gpt2-medium", 1024, 1024, rank=8, k=512, tokens=512, threads=n) for n in (1, 2)),
        # Wider layers but a smaller k, so each basis is as big as gpt2-medium's x2 and the suite
        # stays fast on a 2-core CPU.
        Shape("wide-4096", in_features=4096, out_features=4096, rank=16, k=128, tokens=256, threads=2),
    ],
    "cuda": [
        # GPT-2 medium q/v (the official NOLA GPT-2 setting) and LLaMA-2-7B q_proj, each at
        # k = l = 512 with every pass and at k = l = 128 for forward + backward.
        Shape("gpt2-medium", 1024, 1024, rank=8, k=512, tokens=512, passes=GPU_PASSES),
        Shape("gpt2-medium-k128", 1024, 1024, rank=8, k=128, tokens=512, passes=("forward_backward",)),
        Shape("llama2-7b-q", 4096, 4096, rank=16, k=512, tokens=4096, dtype=torch.bfloat16, passes=GPU_PASSES),
        Shape(
            "llama2-7b-q-k128", 4096, 4096, rank=16, k=128, tokens=4096, dtype=torch.bfloat16,
            passes=("forward_backward",),
        ),
    ],
}

SEED_A, SEED_B = 1, 2


@contextlib.contextmanager
def torch_threads(threads):
    """torch.set_num_threads(threads) inside the block; None leaves the count as it is."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


SCALING = 2.0


def _forced(backend, path):
    """nola_matmul on `backend` forced onto `path` ("fused" or "composed": mix, then two
    matmuls), whatever its prefers_fused would pick, so that both are timed at every shape."""

    def delta(*args, **kwargs):
        with lowrank_path(path):
            return nola_matmul(*args, **kwargs, backend=backend)

    return delta


def basis_implementations(device):
    """Each NOLA implementation's delta on `device`, by name: nola_matmul on every backend that
    runs there natively (fused and composed for backends with fused kernels; not Triton's CPU
    interpreter), the naive baselines, and on CUDA a stored bfloat16 basis. "lora" is built in
    Workload.delta."""
    nola = {}
    for backend in native_backends(torch.device(device)):
        if hasattr(get_backend(backend), "prefers_fused"):
            for path in ("fused", "composed"):
                nola[f"nola-{backend}-{path}"] = _forced(backend, path)
        else:
            nola[f"nola-{backend}"] = functools.partial(nola_matmul, backend=backend)
    if device == "cuda":
        nola["stored-bf16"] = None  # needs its basis: Workload builds it
    return {**nola, "naive": naive_matmul, "official": official_matmul}


def implementations(device):
    return (*basis_implementations(device), "lora")


# How many times a pass generates the whole basis: nola regenerates it for the backward
# projection, official redraws it, naive keeps the forward's copy alive, stored-bf16 made it
# before the benchmark.
BASIS_DRAWS = {
    "forward": {"nola": 1, "naive": 1, "official": 1},
    "backward": {"nola": 1, "naive": 0, "official": 1},
    "forward_backward": {"nola": 2, "naive": 1, "official": 2},
    "layer": {"nola": 2, "naive": 1, "official": 2},
}


def generated_entries(implementation, pass_name, shape):
    """Basis entries one call generates, or None for an implementation that generates none."""
    family = "nola" if implementation.startswith("nola") else implementation
    draws = BASIS_DRAWS[pass_name].get(family)
    if not draws:
        return None
    basis_a = shape.k * shape.rank * shape.in_features
    basis_b = shape.k * shape.out_features * shape.rank
    return draws * (basis_a + basis_b)


class Workload:
    """One case's inputs and trainable parameters on one device, and the pass it times."""

    def __init__(self, implementation, pass_name, shape, device, distribution="uniform"):
        self.implementation, self.pass_name, self.shape = implementation, pass_name, shape
        self.distribution = distribution
        self.x = torch.randn(shape.tokens, shape.in_features, device=device, dtype=shape.dtype)
        if implementation == "lora":
            sizes = [(shape.rank, shape.in_features), (shape.out_features, shape.rank)]
        else:
            sizes = [(shape.k,), (shape.k,)]
        # Random, never zero: zero coefficients or a zero LoRA factor would make a trivial delta.
        self.params = [torch.randn(size, device=device, requires_grad=True) for size in sizes]
        self.grad_out = torch.randn(shape.tokens, shape.out_features, device=device, dtype=shape.dtype)
        if pass_name == "layer":  # the frozen base weight, and x takes a gradient as in a network
            self.weight = torch.randn(shape.out_features, shape.in_features, device=device, dtype=shape.dtype)
            self.x.requires_grad_()
        if implementation == "stored-bf16":
            self.stored = [
                nola_basis(SEED_A, shape.k, (shape.rank, shape.in_features), device=device).bfloat16(),
                nola_basis(SEED_B, shape.k, (shape.out_features, shape.rank), device=device).bfloat16(),
            ]
        self.delta_fn = basis_implementations(device).get(implementation)

    def delta(self, **extra):
        """The delta; `extra` (add_to) goes to nola_matmul, the only implementation that takes it
        (and the distribution, which the official code does not have)."""
        first, second = self.params
        if self.implementation == "lora":
            return lowrank_delta(self.x, first, second * SCALING)
        if self.implementation == "stored-bf16":
            a, b = (
                torch.einsum("k,krc->rc", coeffs.bfloat16(), basis) / math.sqrt(self.shape.k)
                for coeffs, basis in zip(self.params, self.stored, strict=True)
            )
            return lowrank_delta(self.x, a, b * SCALING)
        return self.delta_fn(
            self.x,
            first,
            second,
            seed_a=SEED_A,
            seed_b=SEED_B,
            rank=self.shape.rank,
            out_features=self.shape.out_features,
            scaling=SCALING,
            **extra,
            **({} if self.implementation == "official" else {"distribution": self.distribution}),
        )

    def output(self):
        if self.pass_name != "layer":
            return self.delta()
        base = self.x @ self.weight.T
        if self.implementation.startswith("nola"):  # as NOLALinear does: the add in the last GEMM
            return self.delta(add_to=base)
        return base + self.delta()

    def prepare(self):
        """Untimed set-up before each timed call: drop the last gradients, and for the backward
        pass run the forward. Returns pytest-benchmark's (args, kwargs) for run()."""
        self.clear_grads()
        return ((self.output(),) if self.pass_name == "backward" else ()), {}

    def run(self, output=None):
        """One pass; returns the tensors it computed: the delta, or the parameters' gradients."""
        if self.pass_name == "forward":
            with torch.no_grad():
                return [self.delta()]
        (self.output() if output is None else output).backward(self.grad_out)
        return [param.grad for param in self.params]

    def clear_grads(self):
        """Drop the last pass's gradients, so they neither accumulate nor count in the next peak."""
        for param in (*self.params, self.x):
            param.grad = None


def synchronized(fn, device):
    """fn, made to wait for the device's queued kernels before and after, so that they count in its
    time on CUDA; CPU calls are already synchronous."""
    if torch.device(device).type != "cuda":
        return fn

    def call(*args):
        torch.cuda.synchronize(device)
        result = fn(*args)
        torch.cuda.synchronize(device)
        return result

    return call


def assert_computed(tensors):
    """The pass did real work: every result exists, is finite and is not all zeros."""
    for tensor in tensors:
        assert tensor is not None
        assert torch.isfinite(tensor).all()
        assert tensor.abs().sum() > 0


@dataclass(frozen=True)
class ServingShape:
    """A serving case (bench/test_bench_serving.py): `modules` adapted layers in -> out, each
    adapter rank `rank` with k = l; a batch of `rows` rows of `tokens` tokens each whose rows use
    `distinct` adapters out of a bank of `bank`."""

    name: str
    in_features: int
    out_features: int
    rank: int
    k: int
    rows: int
    tokens: int
    distinct: int
    bank: int
    modules: int = 1
    dtype: torch.dtype = torch.float32
    threads: int | None = None

    @property
    def label(self):
        return self.name if self.threads is None else f"{self.name}-{self.threads}t"


SERVING_SHAPES = {
    "cpu": [
        # One GPT-2-medium q/v layer, unmerged, in eval: the factor cache against a LoRA layer.
        *(ServingShape("gpt2-medium-eval", 1024, 1024, 8, 512, 1, 512, 1, 1, threads=n) for n in (1, 2)),
        # 64 rows, one decode token or 16 prompt tokens each, on 64 distinct adapters of a 1,000 bank.
        ServingShape("gpt2-medium-rows-decode", 1024, 1024, 8, 512, 64, 1, 64, 1000, threads=2),
        ServingShape("gpt2-medium-rows-prefill", 1024, 1024, 8, 512, 64, 16, 64, 1000, threads=2),
        # Loading a 1,000-adapter bank into 4 GPT-2-medium-sized layers.
        ServingShape("gpt2-medium-bank", 1024, 1024, 8, 512, 0, 0, 0, 1000, modules=4, threads=2),
    ],
    "cuda": [
        ServingShape("gpt2-medium-eval", 1024, 1024, 8, 512, 1, 512, 1, 1),
        ServingShape("gpt2-medium-rows-decode", 1024, 1024, 8, 512, 64, 1, 64, 1000),
        ServingShape("gpt2-medium-rows-prefill", 1024, 1024, 8, 512, 64, 16, 64, 1000),
        ServingShape("llama2-7b-q-rows-decode", 4096, 4096, 16, 512, 64, 1, 64, 1000, dtype=torch.bfloat16),
    ],
}


# A whole model's train step, for grouped generation (bench/test_bench_grouped.py): GPT-2 small's
# widths (768, MLP 3072, 12 heads) with separate q/k/v/o projections, as the official GPT-2 code
# adapts q and v, 12 blocks, NOLA rank 8 with k = l = 512 and share_basis.
@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    width: int
    heads: int
    rank: int
    k: int
    tokens: int
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    threads: int | None = None


MODEL_SHAPES = [
    # 64 tokens on the CPU: the frozen model's own step stays a few seconds on 2 cores.
    ModelShape("gpt2-small-12l", layers=12, width=768, heads=12, rank=8, k=512, tokens=64, threads=2),
    ModelShape("gpt2-small-12l", 12, 768, 12, rank=8, k=512, tokens=4096, device="cuda", dtype=torch.bfloat16),
]
# inject's target_modules for each target set.
MODEL_TARGETS = {"qv": ["query", "value"], "all-linear": ["query", "key", "value", "out", "fc", "proj"]}
MODEL_IMPLEMENTATIONS = ("nola-grouped", "nola-per-layer", "lora", "frozen")


class Block(torch.nn.Module):
    """A pre-norm transformer block: causal attention through q, k, v, o and a GELU MLP."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.query, self.key, self.value, self.out = (torch.nn.Linear(width, width) for _ in range(4))
        self.fc, self.proj = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, x):
        batch, tokens, width = x.shape
        h = self.norm1(x)
        q, k, v = (
            layer(h).view(batch, tokens, self.heads, -1).transpose(1, 2) for layer in (self.query, self.key, self.value)
        )
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.proj(torch.nn.functional.gelu(self.fc(self.norm2(x))))


class LoRALinear(torch.nn.Module):
    """PEFT's LoRA layer at the same rank and scaling: base(x) + scaling * (x A^T) B^T, A random,
    B random too (never zero, so the products are real work)."""

    def __init__(self, base, rank):
        super().__init__()
        self.base = base
        device = base.weight.device
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features, device=device) / math.sqrt(base.in_features))
        self.b = torch.nn.Parameter(torch.randn(base.out_features, rank, device=device) / math.sqrt(rank))

    def forward(self, x):
        return self.base(x) + lowrank_delta(x, self.a, self.b * SCALING)


def transformer(shape, implementation, targets):
    """The model of `shape` with `implementation`'s adapters on `targets` ("qv" or "all-linear");
    everything else frozen. "frozen": no adapter, the input takes the gradient instead."""
    torch.manual_seed(0)
    blocks = (Block(shape.width, shape.heads) for _ in range(shape.layers))
    model = torch.nn.Sequential(*blocks).to(shape.device, shape.dtype)
    model.requires_grad_(False)
    names = MODEL_TARGETS[targets]
    if implementation == "lora":
        for block in model:
            for name in names:
                setattr(block, name, LoRALinear(getattr(block, name), shape.rank))
    elif implementation.startswith("nola"):
        inject(model, names, rank=shape.rank, num_basis=shape.k, lora_alpha=SCALING * shape.rank, seed=0, share_basis=True)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.normal_()
        if implementation == "nola-grouped":
            group_generation(model)
    return model


def model_train_step(model, x):
    """One training step's forward + backward (the optimizer's update is LoRA-sized and left out);
    returns the gradients it computed."""
    for parameter in model.parameters():
        parameter.grad = None
    x.grad = None
    model(x).square().mean().backward()
    return [p.grad for p in model.parameters() if p.requires_grad] or [x.grad]
