"""A re-implementation of the official NOLA layers (github UCDvision/NOLA, gpt/src/model_nola.py:
GenerateParams, NOLALinear, LoRA) from their published behaviour, drawing the whole basis in
forward and again in backward: the reference the drop-in (nola_kernels.compat.official) is
compared against.

`Draw` says where the basis comes from: torch's global generator after torch.manual_seed(seed),
as the official code (layout None), or the numbers a GPU of `layout` gives, drawn whole by
official_basis (the CPU cannot run the GPU's generator)."""

import dataclasses
import math

import torch
from torch import nn

from nola_kernels.official_rng import official_basis

SEED_BOUND = int(1e10)


@dataclasses.dataclass(frozen=True)
class Draw:
    layout: object = None
    uniform_rule: str = "current"

    def basis(self, seed, k, out_dim, in_dim, like):
        """The whole (k, out_dim, in_dim) basis in `like`'s dtype and device, times 1/sqrt(k)."""
        torch.manual_seed(int(seed))
        if self.layout is None:
            basis = torch.zeros(k, out_dim, in_dim, device=like.device, dtype=like.dtype).uniform_(-1.0, 1.0)
            return basis * (1.0 / math.sqrt(k))
        return official_basis(
            int(seed), k, (out_dim, in_dim), layout=self.layout, device=like.device, dtype=like.dtype,
            uniform_rule=self.uniform_rule,
        )  # fmt: skip


def _restore_after(call):
    """Run call() under the official reseeding: one randint drawn first, the global generator
    seeded with it afterwards."""
    rand_seed = torch.randint(SEED_BOUND, (1,))
    result = call()
    torch.manual_seed(int(rand_seed))
    return result


class OfficialGenerateParams(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coefficients, out_dim, in_dim, seed, draw):
        ctx.save_for_backward(coefficients)
        ctx.args = (seed, out_dim, in_dim, draw)

        def mix():
            basis = draw.basis(seed, coefficients.numel(), out_dim, in_dim, coefficients)
            return torch.einsum("b,boi->oi", coefficients, basis)

        return _restore_after(mix)

    @staticmethod
    def backward(ctx, grad):
        (coefficients,) = ctx.saved_tensors
        seed, out_dim, in_dim, draw = ctx.args
        k = coefficients.numel()

        def project():
            basis = draw.basis(seed, k, out_dim, in_dim, coefficients)
            return torch.einsum("d,dl->l", grad.flatten(), basis.permute(1, 2, 0).reshape(-1, k))

        return _restore_after(project), None, None, None, None


class OfficialNOLALinear(nn.Linear):
    def __init__(self, in_features, out_features, num_basis=256, draw=Draw(), **kwargs):
        nn.Linear.__init__(self, in_features, out_features, **kwargs)
        self.num_basis, self.draw = num_basis, draw
        self.seed = nn.Parameter(torch.randint(SEED_BOUND, (1,)), requires_grad=False)
        self.coefficients = nn.Parameter(torch.zeros(num_basis))
        self.weight.requires_grad = False

    def forward(self, x):
        mix = OfficialGenerateParams.apply(self.coefficients, self.out_features, self.in_features, self.seed, self.draw)
        return x @ (mix + self.weight).t()


class OfficialLoRA(nn.Module):
    def __init__(self, in_features, out_features, use_nola=False, num_basis=1024, rank=16, alpha=1.0, draw=Draw()):
        super().__init__()
        self.scale = alpha / rank
        self.use_nola = use_nola
        if use_nola:
            self.lora_A = OfficialNOLALinear(in_features, rank, num_basis=num_basis, draw=draw, bias=False)
            self.lora_B = OfficialNOLALinear(rank, out_features, num_basis=num_basis, draw=draw, bias=False)
        else:
            self.lora_A = nn.Linear(in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, out_features, bias=False)
        if use_nola:
            nn.init.zeros_(self.lora_A.coefficients)
            nn.init.zeros_(self.lora_B.coefficients)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return self.lora_B(self.lora_A(x)) * self.scale
