"""Official NOLA checkpoints (github UCDvision/NOLA): rebuild their bases and mix them into plain
LoRA factors, which then run, merge and export like any LoRA.

The official code draws each factor's basis with torch's global RNG: torch.manual_seed(seed),
then one uniform_(-1, 1) over the whole (k, out, in) tensor, times 1/sqrt(k). Those numbers
depend on the device: mt19937 on the CPU; on a GPU, Philox4x32-10 spread over a launch grid that
depends on the GPU model. `CudaLayout` reproduces a GPU's numbers on any device from its SM
count (docs/adapters.md gives the formula)."""

import dataclasses
import math
import re
from pathlib import Path

import torch

from ..philox import MASK32, philox4x32
from ..validation import check_real
from .base_layer import add_to_weight, features, mergeable_weight
from .checkpoint_file import AdapterFileError

_FACTOR_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<role>[AB])\.(?P<field>coefficients|seed|weight)$")
_BLOCK_THREADS = 256  # torch's launch block for random fills
LAYOUT_BLOCK_ENTRIES = 1 << 22  # basis entries per block when generating a GPU layout


@dataclasses.dataclass(frozen=True)
class CudaLayout:
    """A GPU's launch limits, which fix where torch's CUDA uniform_ puts each draw."""

    multiprocessors: int
    max_threads_per_multiprocessor: int = 2048

    def total_threads(self, numel):
        """Threads of the launch for a fill of `numel` elements: 256 per block, at most as many
        blocks as fit on the GPU at once."""
        blocks_per_sm = self.max_threads_per_multiprocessor // _BLOCK_THREADS
        grid = min(-(-numel // _BLOCK_THREADS), self.multiprocessors * blocks_per_sm)
        return _BLOCK_THREADS * grid

    @classmethod
    def of_device(cls, device=None):
        """The layout of a CUDA device of this machine."""
        properties = torch.cuda.get_device_properties(device)
        return cls(properties.multi_processor_count, properties.max_threads_per_multi_processor)


GPU_LAYOUTS = {
    "H100 SXM": CudaLayout(132),
    "H200": CudaLayout(132),
    "A100": CudaLayout(108),
    "V100": CudaLayout(80),
    "RTX 3090": CudaLayout(82, 1536),
}


def cuda_uniform(seed, start, stop, numel, layout, device=None):
    """Elements [start, stop) of torch.empty(numel, device="cuda").uniform_(-1, 1) right after
    torch.manual_seed(seed) on a GPU with `layout`, as float32, computed on `device`.

    Element li comes from thread li mod T (T = layout.total_threads(numel)) at its loop step
    li div 4T: word (li mod 4T) div T of Philox4x32-10(counter = (step, 0, thread), key = seed);
    u = float(word) * 2^-32 + 2^-33 in (0, 1], value = 2u - 1, and a value of 1 becomes -1."""
    threads = layout.total_threads(numel)
    index = torch.arange(start, stop, dtype=torch.int64, device=device)
    thread = index % threads
    step = index // (4 * threads)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    words = torch.stack(philox4x32((step, zero, thread & MASK32, thread >> 32), (seed & MASK32, seed >> 32)))
    word = words.gather(0, ((index % (4 * threads)) // threads).unsqueeze(0))[0]
    # Each float32 step rounds once, as on the GPU: the products by powers of two are exact.
    u = (word.to(torch.float32).double() * 2.0**-32 + 2.0**-33).float()
    value = (u.double() * 2 - 1).float()
    return torch.where(value == 1, -1.0, value)


def official_basis(seed, k, shape, *, device="cpu", layout=None, dtype=torch.float32, basis_range=None):
    """The official code's basis for one factor, (k, out, in) in `dtype`, scaled by 1/sqrt(k):
    drawn by torch's RNG on `device` (what the official code gets there), or, with a CudaLayout,
    the numbers that GPU gives, computed on `device`. basis_range=(i0, i1) computes only basis
    matrices i0..i1-1 (CudaLayout only: torch's RNG draws the whole tensor in one go)."""
    if layout is None:
        generator = torch.Generator(device).manual_seed(seed)
        basis = torch.empty(k, *shape, dtype=dtype, device=device).uniform_(-1, 1, generator=generator)
    else:
        i0, i1 = basis_range or (0, k)
        per_matrix = shape[0] * shape[1]
        values = cuda_uniform(seed, i0 * per_matrix, i1 * per_matrix, k * per_matrix, layout, device)
        # A half-precision fill rounds the float32 value first, then flips a 1 to -1 again.
        basis = values.to(dtype)
        basis = torch.where(basis == 1, -1.0, basis).to(dtype).view(i1 - i0, *shape)
    return (basis.float() * (1.0 / math.sqrt(k))).to(dtype)


def official_mix(coefficients, seed, shape, *, device="cpu", layout=None, dtype=torch.float32):
    """sum_i c_i U_i / sqrt(k) over the official basis, in float32; with a CudaLayout the basis
    is generated a block of matrices at a time (about LAYOUT_BLOCK_ENTRIES entries)."""
    k = coefficients.numel()
    coefficients = coefficients.to(device, torch.float32)
    if layout is None:
        blocks = [(0, k)]
    else:
        step = max(1, LAYOUT_BLOCK_ENTRIES // (shape[0] * shape[1]))
        blocks = [(i0, min(i0 + step, k)) for i0 in range(0, k, step)]
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    for i0, i1 in blocks:
        basis = official_basis(seed, k, shape, device=device, layout=layout, dtype=dtype, basis_range=(i0, i1))
        out += torch.einsum("b,boi->oi", coefficients[i0:i1], basis.float())
    return out


def _load_state_dict(path):
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors', pickle's and the OS's errors alike
        raise AdapterFileError(f"cannot read {path} as a state dict: {error}") from error


def read_official_checkpoint(source):
    """{module prefix: {"A": {...}, "B": {...}}} with each factor's coefficients, seed and dense
    weight, from a state dict or a file (.bin/.pt via torch.load, .safetensors)."""
    if not isinstance(source, dict):
        source = _load_state_dict(Path(source))
    modules = {}
    for key, tensor in source.items():
        match = _FACTOR_KEY.fullmatch(key)
        if match:
            modules.setdefault(match["module"], {}).setdefault(match["role"], {})[match["field"]] = tensor
    incomplete = [
        f"{name}.lora_{role}"
        for name, roles in modules.items()
        for role in "AB"
        if len(roles.get(role, {})) != 3
    ]
    if incomplete or not modules:
        raise ValueError(
            "not an official NOLA checkpoint: every lora_A and lora_B needs coefficients, seed and weight"
            + (f"; incomplete: {', '.join(incomplete)}" if incomplete else "")
        )
    return modules


def official_factors(source, *, device="cpu", layout=None, dtype=torch.float32):
    """{module prefix: (A (rank, in), B (out, rank))} in float32: each factor's dense weight plus
    its mixed basis, the basis drawn as `official_basis` says (in `dtype`: bfloat16 for the
    official LLaMA runs). The LoRA scaling (lora_alpha / rank) is not applied."""
    factors = {}
    for name, roles in read_official_checkpoint(source).items():
        mixed = []
        for role in "AB":
            fields = roles[role]
            weight = fields["weight"].to(device, torch.float32)
            seed = int(fields["seed"].reshape(-1)[0])
            mix = official_mix(
                fields["coefficients"], seed, tuple(weight.shape), device=device, layout=layout, dtype=dtype
            )
            mixed.append(weight + mix)
        factors[name] = tuple(mixed)
    return factors


def gpt2_fused_qv(factors, embed):
    """Official GPT-2 factors (nola_query and nola_value of block i) as one LoRA of rank 2r on
    transformers' fused c_attn of block i (output columns q | k | v, `embed` each)."""
    pattern = re.compile(r"(?:.*\.)?h\.(\d+)\.attn\.nola_(query|value)")
    blocks = {}
    for name, pair in factors.items():
        match = pattern.fullmatch(name)
        if not match:
            raise ValueError(f"{name} is not an official GPT-2 nola_query/nola_value module")
        blocks.setdefault(int(match[1]), {})[match[2]] = pair
    fused = {}
    for block, parts in sorted(blocks.items()):
        (a_q, b_q), (a_v, b_v) = parts["query"], parts["value"]
        rank = a_q.shape[0]
        b = torch.zeros(3 * embed, 2 * rank, dtype=b_q.dtype, device=b_q.device)
        b[:embed, :rank], b[2 * embed :, rank:] = b_q, b_v
        fused[f"transformer.h.{block}.attn.c_attn"] = (torch.cat([a_q, a_v]), b)
    return fused


def strip_peft_prefix(factors, prefix="base_model.model."):
    """Official LLaMA names (PEFT's base_model.model.<name>) as the model's own module names."""
    return {name.removeprefix(prefix): pair for name, pair in factors.items()}


def merge_factors(model, factors, scaling):
    """Add scaling * B A to the weight of each named module of `model` (a plain model). Every
    module and factor pair is checked before the first weight changes."""
    scaling = check_real("scaling", scaling, finite=True)
    modules = {name: _merge_target(model, name, pair) for name, pair in factors.items()}
    for name, (a, b) in factors.items():
        add_to_weight(modules[name], scaling * (b.float() @ a.float()))


def _merge_target(model, name, pair):
    try:
        module = model.get_submodule(name)
    except AttributeError as error:
        raise ValueError(f"factors: the model has no module {name!r}") from error
    mergeable_weight(module)
    in_features, out_features = features(module, name)
    a, b = pair
    if (
        a.dim() != 2
        or b.dim() != 2
        or a.shape[0] != b.shape[1]
        or (b.shape[0], a.shape[1]) != (out_features, in_features)
    ):
        raise ValueError(
            f"factors[{name!r}] must be A (rank, {in_features}) and B ({out_features}, rank), "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return module
