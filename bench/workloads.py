"""The benchmark cases: shapes, the four implementations of a LoRA-style delta, and their inputs."""

import functools
from dataclasses import asdict, dataclass

import torch

from nola_kernels import nola_matmul
from nola_kernels.lowrank import lowrank_delta
from nola_kernels.reference import naive_matmul, official_matmul


@dataclass(frozen=True)
class Shape:
    name: str
    in_features: int
    out_features: int
    rank: int
    k: int  # basis size of each factor (NOLA's k for A and l for B, equal here)
    tokens: int

    def fields(self):
        """The shape as a flat dict, for reports."""
        return {("shape" if key == "name" else key): value for key, value in asdict(self).items()}


SHAPES = {
    shape.name: shape
    for shape in (
        Shape("gpt2-medium", in_features=1024, out_features=1024, rank=8, k=512, tokens=512),
        # Wider layers but a smaller k, so each basis is as big as gpt2-medium's x2 and the suite
        # stays fast on a 2-core CPU.
        Shape("wide-4096", in_features=4096, out_features=4096, rank=16, k=128, tokens=256),
    )
}

SEED_A, SEED_B = 1, 2
SCALING = 2.0

# Each NOLA implementation's delta; "lora" has no basis and is built in Workload.delta.
BASIS_IMPLEMENTATIONS = {
    "nola": functools.partial(nola_matmul, backend="torch"),
    "naive": naive_matmul,
    "official": official_matmul,
}
IMPLEMENTATIONS = (*BASIS_IMPLEMENTATIONS, "lora")
PASSES = ("forward", "forward_backward")

# How many times a pass generates the whole basis: nola regenerates it for the backward
# projection, official redraws it, naive keeps the forward's copy alive instead.
BASIS_DRAWS = {
    "forward": {"nola": 1, "naive": 1, "official": 1},
    "forward_backward": {"nola": 2, "naive": 1, "official": 2},
}


def generated_entries(implementation, pass_name, shape):
    """Basis entries one call generates, or None for an implementation without a basis."""
    draws = BASIS_DRAWS[pass_name].get(implementation)
    if draws is None:
        return None
    basis_a = shape.k * shape.rank * shape.in_features
    basis_b = shape.k * shape.out_features * shape.rank
    return draws * (basis_a + basis_b)


class Workload:
    """One case's inputs and trainable parameters on one device, and the pass it times."""

    def __init__(self, implementation, pass_name, shape, device):
        self.implementation, self.pass_name, self.shape = implementation, pass_name, shape
        self.x = torch.randn(shape.tokens, shape.in_features, device=device)
        if implementation == "lora":
            sizes = [(shape.rank, shape.in_features), (shape.out_features, shape.rank)]
        else:
            sizes = [(shape.k,), (shape.k,)]
        # Random, never zero: zero coefficients or a zero LoRA factor would make a trivial delta.
        self.params = [torch.randn(size, device=device, requires_grad=True) for size in sizes]
        self.grad_out = torch.randn(shape.tokens, shape.out_features, device=device)

    def delta(self):
        first, second = self.params
        if self.implementation == "lora":
            return lowrank_delta(self.x, first, second * SCALING)
        return BASIS_IMPLEMENTATIONS[self.implementation](
            self.x,
            first,
            second,
            seed_a=SEED_A,
            seed_b=SEED_B,
            rank=self.shape.rank,
            out_features=self.shape.out_features,
            scaling=SCALING,
        )

    def run(self):
        """One pass; returns the tensors it computed: the delta, or the parameters' gradients."""
        if self.pass_name == "forward":
            with torch.no_grad():
                return [self.delta()]
        self.delta().backward(self.grad_out)
        return [param.grad for param in self.params]

    def clear_grads(self):
        """Drop the last pass's gradients, so they neither accumulate nor count in the next peak."""
        for param in self.params:
            param.grad = None


def synchronized(fn, device):
    """fn, made to wait for the device's queued kernels before and after, so that they count in its
    time on CUDA; CPU calls are already synchronous."""
    if torch.device(device).type != "cuda":
        return fn

    def call():
        torch.cuda.synchronize(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result

    return call


def assert_computed(tensors):
    """The pass did real work: every result exists, is finite and is not all zeros."""
    for tensor in tensors:
        assert tensor is not None
        assert torch.isfinite(tensor).all()
        assert tensor.abs().sum() > 0
