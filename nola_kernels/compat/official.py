"""A drop-in for the official NOLA layers (github UCDvision/NOLA: `GenerateParams`, `NOLALinear`
and GPT-2's `LoRA` in gpt/src/model_nola.py; `NOLALinear` in the LLaMA code's
peft/tuners/lora.py). Same constructor arguments, parameter names and state-dict keys (`weight`,
`seed`, `coefficients`; `bias` where asked for), same numbers, but the basis is generated a block
of matrices at a time instead of whole, in forward and again in backward:

    from nola_kernels.compat.official import GenerateParams, LoRA, NOLALinear

in place of the official definitions (for the LLaMA code, set `peft.tuners.lora.NOLALinear`).

Which numbers: the official code draws each basis with torch's global generator on the device the
layer runs on. `layout=None` (the default) assumes just that: on a CUDA device, that GPU's layout
(CudaLayout.of_device), emulated a block at a time; on the CPU, torch's CPU generator (mt19937),
a block at a time from one generator (it fills a tensor in order, one draw per element, so
consecutive blocks are the whole draw's numbers); on another device, torch's generator there,
drawing the whole tensor. A checkpoint trained on another GPU model needs that GPU's layout:
`layout="A100"` (a GPU_LAYOUTS name) or a CudaLayout; `layout="generator"` asks for torch's
generator wherever the layer runs (on a GPU the whole tensor at once: its draw's layout depends
on the draw's size). `uniform_rule` is torch's rule for a half-precision
value that rounds to 1 ("current": torch >= 2.1; "legacy": torch <= 2.0, the official LLaMA runs).

As in the official code: the basis is drawn in the coefficients' dtype (bfloat16 once the module
is cast to it), scaled by 1/sqrt(k) with one rounding to that dtype; the mix and the gradient come
back in that dtype; every forward and backward reseeds torch's global generator from one draw of
it (so dropout and every later draw see the official run's numbers; reseed_global_rng=False
leaves it alone); `NOLALinear.forward` is x @ (mix + weight)^T and ignores a bias. The mix and
the gradient sum in float32 (the official code sums in its BLAS's order)."""

import dataclasses
import math
import numbers

import torch
from torch import nn

from ..official_rng import (
    GENERATOR,
    CudaLayout,
    OfficialBasis,
    check_layout_dtype,
    check_uniform_rule,
    resolve_layout,
)

# Basis entries generated at a time, by device type. The emulation of a CudaLayout holds about
# 104 bytes of int64 temporaries per entry; on the CPU its int64 operations run fastest on blocks
# that stay in cache (2^14 entries: about 130 ns per entry on one core, 2^18: about 600). On CUDA
# bigger blocks take fewer kernel launches (2^20: not yet measured).
BLOCK_ENTRIES = {"cpu": 1 << 14, "cuda": 1 << 20}
_SEED_BOUND = int(1e10)  # the official seeds: torch.randint(int(1e10), (1,))


@dataclasses.dataclass(frozen=True)
class Generation:
    """How the drop-in generates a basis: `layout` (None: the device's own, see the module's
    docstring), `uniform_rule`, whether each call reseeds torch's global generator as the
    official code does, and the basis entries per block (None: BLOCK_ENTRIES of the device)."""

    layout: object = None
    uniform_rule: str = "current"
    reseed_global_rng: bool = True
    block_entries: int = None

    def __post_init__(self):
        if self.layout is not None:
            object.__setattr__(self, "layout", resolve_layout(self.layout))
        check_uniform_rule(self.uniform_rule, self.layout)
        if not isinstance(self.reseed_global_rng, bool):
            raise TypeError(f"reseed_global_rng must be True or False, got {self.reseed_global_rng!r}")
        if self.block_entries is not None:
            _check_positive("block_entries", self.block_entries)

    def layout_on(self, device):
        """The layout used on `device`: the one named, else the device's own."""
        if self.layout is not None:
            return self.layout
        return CudaLayout.of_device(device) if device.type == "cuda" else GENERATOR

    def block_entries_on(self, device):
        return self.block_entries or BLOCK_ENTRIES.get(device.type, BLOCK_ENTRIES["cpu"])


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _seed_value(seed):
    """The seed as an int, from a Python int or a one-element integer tensor (the `seed` parameter)."""
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
            raise ValueError(f"seed must hold one integer, got {seed.dtype} of shape {tuple(seed.shape)}")
        seed = int(seed.reshape(-1)[0])
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer or a one-element integer tensor, got {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return int(seed)


def official_basis_of(coefficients, out_dim, in_dim, seed, generation):
    """The OfficialBasis the official GenerateParams draws for these arguments, all checked."""
    if not isinstance(coefficients, torch.Tensor) or coefficients.dim() != 1 or coefficients.numel() == 0:
        raise ValueError(f"coefficients must be a non-empty 1-D tensor, got {_describe(coefficients)}")
    if not coefficients.dtype.is_floating_point:
        raise ValueError(f"coefficients must be a float tensor, got {coefficients.dtype}")
    shape = (_check_positive("out_dim", out_dim), _check_positive("in_dim", in_dim))
    seed = _seed_value(seed)
    if not isinstance(generation, Generation):
        raise TypeError(f"generation must be a Generation, got {generation!r}")
    layout = generation.layout_on(coefficients.device)
    check_uniform_rule(generation.uniform_rule, layout)
    check_layout_dtype(coefficients.dtype, layout, "coefficients' dtype")
    return OfficialBasis(
        seed, coefficients.numel(), shape, layout, coefficients.dtype, generation.uniform_rule,
        generation.block_entries_on(coefficients.device),
    )  # fmt: skip


def _describe(value):
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)


def reseed_global_rng():
    """What the official GenerateParams leaves behind: torch's global generators (every device)
    seeded with one torch.randint(int(1e10), (1,)) drawn from the CPU one."""
    torch.manual_seed(int(torch.randint(_SEED_BOUND, (1,))))


class GenerateParams(torch.autograd.Function):
    """The official GenerateParams.apply(coefficients, out_dim, in_dim, seed): the (out_dim,
    in_dim) mix sum_i c_i U_i / sqrt(k) in the coefficients' dtype, gradient for the
    coefficients only. An optional fifth argument, a Generation, says how the basis is drawn."""

    @staticmethod
    def forward(ctx, coefficients, out_dim, in_dim, seed, generation=Generation()):
        basis = official_basis_of(coefficients, out_dim, in_dim, seed, generation)
        mix = basis.mix(coefficients.float()).to(coefficients.dtype)
        ctx.basis, ctx.reseed = basis, generation.reseed_global_rng
        if ctx.reseed:
            reseed_global_rng()
        return mix

    @staticmethod
    def backward(ctx, grad):
        grad_coefficients = ctx.basis.project(grad).to(ctx.basis.dtype)
        if ctx.reseed:
            reseed_global_rng()
        return grad_coefficients, None, None, None, None


class NOLALinear(nn.Linear):
    """The official NOLALinear(in_features, out_features, num_basis=256, **kwargs of nn.Linear):
    weight (frozen), seed (int64 in [0, 1e10), drawn from torch's global generator after
    nn.Linear's own initialisation, as the official layer draws it) and coefficients (zeros);
    forward x @ (mix + weight)^T. Keyword arguments layout, uniform_rule, reseed_global_rng and
    block_entries: see Generation and the module's docstring."""

    def __init__(
        self, in_features, out_features, num_basis=256, *, layout=None, uniform_rule="current",
        reseed_global_rng=True, block_entries=None, **kwargs,
    ):  # fmt: skip
        num_basis = _check_positive("num_basis", num_basis)
        generation = Generation(layout, uniform_rule, reseed_global_rng, block_entries)
        nn.Linear.__init__(self, in_features, out_features, **kwargs)
        self.num_basis = num_basis
        self.generation = generation
        self.generate_params = GenerateParams.apply
        self.seed = nn.Parameter(torch.randint(_SEED_BOUND, (1,)), requires_grad=False)
        self.coefficients = nn.Parameter(torch.zeros(num_basis), requires_grad=True)
        self.weight.requires_grad = False

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, num_basis={self.num_basis}, "
            f"layout={self.generation.layout!r}"
        )

    def forward(self, x):
        mix = self.generate_params(self.coefficients, self.out_features, self.in_features, self.seed, self.generation)
        return x @ (mix + self.weight).t()


class LoRA(nn.Module):
    """The official GPT-2 LoRA(in_features, out_features, use_nola=False, num_basis=1024, rank=16,
    alpha=1.0): lora_A = NOLALinear(in_features, rank), lora_B = NOLALinear(rank, out_features)
    (plain nn.Linear without use_nola), coefficients zero, lora_A.weight kaiming-uniform and
    lora_B.weight zero; forward lora_B(lora_A(x)) * alpha / rank. The drop-in's keyword
    arguments go to both NOLALinear layers."""

    def __init__(
        self, in_features, out_features, use_nola=False, num_basis=1024, rank=16, alpha=1.0, *,
        layout=None, uniform_rule="current", reseed_global_rng=True, block_entries=None, **kwargs,
    ):  # fmt: skip
        rank = _check_positive("rank", rank)
        num_basis = _check_positive("num_basis", num_basis)
        generation = dict(layout=layout, uniform_rule=uniform_rule, reseed_global_rng=reseed_global_rng,
                          block_entries=block_entries)  # fmt: skip
        Generation(**generation)  # checked before any layer is made
        super().__init__(**kwargs)
        self.in_features = in_features
        self.out_features = out_features
        self.num_basis_A = self.num_basis_B = num_basis
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        self.generate_params = GenerateParams.apply
        self.use_nola = use_nola
        if use_nola:
            self.lora_A = NOLALinear(in_features, rank, num_basis=num_basis, bias=False, **generation)
            self.lora_B = NOLALinear(rank, out_features, num_basis=num_basis, bias=False, **generation)
        else:
            self.lora_A = nn.Linear(in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, out_features, bias=False)
        self.reset_lora_parameters()

    def extra_repr(self):
        return (
            f"NOLA: rank={self.rank}, in_features={self.in_features}, out_features={self.out_features}, "
            f"num_basis_A={self.num_basis_A}, num_basis_B={self.num_basis_B}"
        )

    def reset_lora_parameters(self):
        if self.use_nola:
            nn.init.zeros_(self.lora_A.coefficients)
            nn.init.zeros_(self.lora_B.coefficients)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return self.lora_B(self.lora_A(x)) * self.scale
