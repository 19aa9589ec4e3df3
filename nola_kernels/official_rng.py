"""The official NOLA code's bases (github UCDvision/NOLA): torch.manual_seed(seed), then one
uniform_(-1, 1) over the whole (k, out, in) tensor, times 1/sqrt(k).

Those numbers depend on where they were drawn: mt19937 on the CPU; on a GPU, Philox4x32-10
spread over a launch grid that depends on the GPU model. `CudaLayout` reproduces a GPU's numbers
on any device from its SM count (docs/adapters.md gives the formula), under either of torch's
two rules for a value that rounds to the upper bound (UNIFORM_RULES). A GPU's numbers are also
basis families of the ops (OfficialFamily, named by official_distribution; docs/spec.md,
"Official CUDA layout families"), which generate them where they are used."""

import dataclasses
import math

import torch

from .philox import MASK32, philox4x32

_BLOCK_THREADS = 256  # torch's launch block for random fills
LAYOUT_BLOCK_ENTRIES = 1 << 22  # basis entries per block when generating a GPU layout

# How torch's CUDA uniform_ treats a value equal to the upper bound `to` (here 1), which it
# maps to `from` (-1) because its draws lie in (0, 1]:
# - "current" (torch >= 2.1, since the fix of torch issue 96947): the check runs on the value in
#   the tensor's dtype, so a bfloat16/float16 value that rounds up to 1 becomes -1 as well;
# - "legacy" (torch <= 2.0, the official LLaMA runs): the check runs on the float32 draw only,
#   so a half-precision value that rounds up to 1 stays 1.
# float32 values are the same under both rules.
UNIFORM_RULES = ("current", "legacy")

# layout= value meaning torch's own generator on the given device (no emulation).
GENERATOR = "generator"


def launch_threads(numel, resident_threads):
    """Threads of torch's launch for a fill of `numel` elements on a GPU of `resident_threads`:
    256 per block, one element per thread up to the cap."""
    return min(-(-numel // _BLOCK_THREADS) * _BLOCK_THREADS, resident_threads)


@dataclasses.dataclass(frozen=True)
class CudaLayout:
    """A GPU's launch limits, which fix where torch's CUDA uniform_ puts each draw."""

    multiprocessors: int
    max_threads_per_multiprocessor: int = 2048

    @property
    def resident_threads(self):
        """The most threads of a fill: 256 per block, as many blocks as fit on the GPU at once."""
        blocks_per_sm = self.max_threads_per_multiprocessor // _BLOCK_THREADS
        return _BLOCK_THREADS * self.multiprocessors * blocks_per_sm

    def total_threads(self, numel):
        """Threads of the launch for a fill of `numel` elements."""
        return launch_threads(numel, self.resident_threads)

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


def resolve_layout(layout, name="layout"):
    """A CudaLayout, or GENERATOR, from what a caller may pass: a CudaLayout, a GPU_LAYOUTS name,
    or "generator"."""
    if isinstance(layout, CudaLayout) or layout == GENERATOR:
        return layout
    if isinstance(layout, str) and layout in GPU_LAYOUTS:
        return GPU_LAYOUTS[layout]
    raise ValueError(
        f"{name} must be a CudaLayout, one of {sorted(GPU_LAYOUTS)} or {GENERATOR!r} (torch's own "
        f"generator on the device), got {layout!r}"
    )


def check_uniform_rule(uniform_rule, layout):
    if uniform_rule not in UNIFORM_RULES:
        raise ValueError(f"uniform_rule must be one of {UNIFORM_RULES}, got {uniform_rule!r}")
    if uniform_rule == "legacy" and layout == GENERATOR:
        raise ValueError(
            "uniform_rule='legacy' reproduces torch <= 2.0 on a GPU: it needs a CudaLayout "
            f"(layout={GENERATOR!r} draws with the installed torch's own rule)"
        )
    return uniform_rule


def cuda_uniform(seed, start, stop, numel, layout, device=None):
    """Elements [start, stop) of torch.empty(numel, device="cuda").uniform_(-1, 1) right after
    torch.manual_seed(seed) on a GPU with `layout`, as the float32 values before the dtype's
    rounding, computed on `device`.

    Element li comes from thread li mod T (T = layout.total_threads(numel)) at its loop step
    li div 4T: word (li mod 4T) div T of Philox4x32-10(counter = (step, 0, thread), key = seed);
    u = float(word) * 2^-32 + 2^-33 in (0, 1], value = 2u - 1, and a value of 1 becomes -1."""
    index = torch.arange(start, stop, dtype=torch.int64, device=device)
    return _uniform_at(seed, index, layout.total_threads(numel))


def _uniform_at(seed, index, threads):
    """cuda_uniform's values at the flat indices `index` (an int64 tensor) of a fill by `threads`
    threads."""
    device = index.device
    thread = index % threads
    step = index // (4 * threads)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    words = torch.stack(philox4x32((step, zero, thread & MASK32, thread >> 32), (seed & MASK32, seed >> 32)))
    word = words.gather(0, ((index % (4 * threads)) // threads).unsqueeze(0))[0]
    # Each float32 step rounds once, as on the GPU: the products by powers of two are exact.
    u = (word.to(torch.float32).double() * 2.0**-32 + 2.0**-33).float()
    value = (u.double() * 2 - 1).float()
    return torch.where(value == 1, -1.0, value)


# The dtypes whose CUDA uniform_ takes four float32 draws per Philox call, as cuda_uniform does
# (float64 takes two 53-bit draws per call: another layout, not emulated).
LAYOUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_layout_dtype(dtype, layout, name="dtype"):
    if layout != GENERATOR and dtype not in LAYOUT_DTYPES:
        raise ValueError(
            f"{name} must be one of {[str(d) for d in LAYOUT_DTYPES]} with a CudaLayout (a GPU draws "
            f"float64 in another layout), got {dtype}"
        )
    return dtype


def official_basis(
    seed, k, shape, *, layout, device="cpu", dtype=torch.float32, basis_range=None, uniform_rule="current"
):
    """The official code's basis for one factor, (k, out, in) in `dtype`, scaled by 1/sqrt(k):
    with layout="generator", drawn by torch's generator on `device` (what the official code gets
    there); with a CudaLayout (or a GPU_LAYOUTS name), the numbers that GPU gives under
    `uniform_rule`, computed on `device`. basis_range=(i0, i1) computes only basis matrices
    i0..i1-1 (CudaLayout only: torch's generator draws the whole tensor in one go)."""
    layout = resolve_layout(layout)
    check_uniform_rule(uniform_rule, layout)
    check_layout_dtype(dtype, layout)
    if layout == GENERATOR and basis_range not in (None, (0, k)):
        raise ValueError(f"basis_range needs a CudaLayout: torch's generator draws all {k} matrices at once")
    if layout == GENERATOR:
        basis = _drawn(torch.Generator(device).manual_seed(seed), k, shape, dtype, device)
    else:
        i0, i1 = basis_range or (0, k)
        per_matrix = shape[0] * shape[1]
        values = cuda_uniform(seed, i0 * per_matrix, i1 * per_matrix, k * per_matrix, layout, device)
        basis = _rounded(values, dtype, uniform_rule).view(i1 - i0, *shape)
    return _scaled(basis, k, dtype)


def _rounded(values, dtype, uniform_rule):
    """cuda_uniform's float32 values as uniform_ leaves them in `dtype` under `uniform_rule`."""
    rounded = values.to(dtype)
    if uniform_rule == "current":
        rounded = torch.where(rounded == 1, -1.0, rounded).to(dtype)
    return rounded


def _drawn(generator, count, shape, dtype, device):
    return torch.empty(count, *shape, dtype=dtype, device=device).uniform_(-1, 1, generator=generator)


def _scaled(basis, k, dtype):
    # float() is a copy only for half precision: the scaling rounds once, from float32.
    return basis.float().mul_(1.0 / math.sqrt(k)).to(dtype)


def basis_blocks(k, shape, block_entries=None):
    """The (i0, i1) ranges of basis matrices generated at a time: about `block_entries` entries
    (LAYOUT_BLOCK_ENTRIES by default), at least one matrix."""
    step = max(1, (block_entries or LAYOUT_BLOCK_ENTRIES) // (shape[0] * shape[1]))
    return [(i0, min(i0 + step, k)) for i0 in range(0, k, step)]


@dataclasses.dataclass(frozen=True)
class OfficialBasis:
    """Where one factor's official basis comes from: `seed`, k matrices of `shape`, drawn as
    `layout` draws them in `dtype` under `uniform_rule`, generated `block_entries` at a time."""

    seed: int
    k: int
    shape: tuple
    layout: object
    dtype: torch.dtype = torch.float32
    uniform_rule: str = "current"
    block_entries: int = None

    def __post_init__(self):
        object.__setattr__(self, "layout", resolve_layout(self.layout))
        check_uniform_rule(self.uniform_rule, self.layout)
        check_layout_dtype(self.dtype, self.layout)

    def blocks(self, device):
        """(i0, i1, basis matrices i0..i1-1 as float32) on `device`, block by block; the whole
        basis at once only for torch's generator on a GPU, which spreads a draw over a launch
        grid that depends on the draw's size."""
        device = torch.device(device)
        if self.layout == GENERATOR and device.type != "cpu":
            basis = official_basis(self.seed, self.k, self.shape, layout=GENERATOR, device=device, dtype=self.dtype)
            yield 0, self.k, basis.float()
            return
        # The CPU's generator (mt19937) fills a tensor in order, one draw per element: blocks
        # drawn one after another from one generator are the whole draw's numbers.
        generator = torch.Generator(device).manual_seed(self.seed) if self.layout == GENERATOR else None
        for i0, i1 in basis_blocks(self.k, self.shape, self.block_entries):
            if generator is None:
                basis = official_basis(
                    self.seed, self.k, self.shape, layout=self.layout, device=device, dtype=self.dtype,
                    basis_range=(i0, i1), uniform_rule=self.uniform_rule,
                )  # fmt: skip
            else:
                basis = _scaled(_drawn(generator, i1 - i0, self.shape, self.dtype, device), self.k, self.dtype)
            yield i0, i1, basis.float()

    def mix(self, coefficients):
        """sum_i c_i U_i (float32 coefficients) in float32, on the coefficients' device."""
        out = torch.zeros(self.shape, dtype=torch.float32, device=coefficients.device)
        for i0, i1, block in self.blocks(coefficients.device):
            out += torch.einsum("b,boi->oi", coefficients[i0:i1], block)
        return out

    def project(self, grad):
        """sum_{o,i} grad[o, i] U_b[o, i] for each b, in float32: the gradient of the mix with
        respect to its coefficients, over the same blocks as the mix."""
        grad = grad.float().reshape(-1)
        out = torch.empty(self.k, dtype=torch.float32, device=grad.device)
        for i0, i1, block in self.blocks(grad.device):
            # mv, not einsum("boi,oi->b"): on the CPU that einsum runs about 10x slower.
            torch.mv(block.view(i1 - i0, -1), grad, out=out[i0:i1])
        return out


def official_mix(
    coefficients, seed, shape, *, layout, device="cpu", dtype=torch.float32, uniform_rule="current", block_entries=None
):
    """sum_i c_i U_i / sqrt(k) over the official basis, in float32, the basis generated a block
    of matrices at a time (about `block_entries` entries, LAYOUT_BLOCK_ENTRIES by default), but
    for torch's generator on a GPU (OfficialBasis.blocks)."""
    basis = OfficialBasis(seed, coefficients.numel(), tuple(shape), layout, dtype, uniform_rule, block_entries)
    return basis.mix(coefficients.to(device, torch.float32))


# The official CUDA layout as basis families of the ops (docs/spec.md, "Official CUDA layout
# families"): a `distribution` name "official:<dtype>:<rule>:<resident threads>".
OFFICIAL_PREFIX = "official"
OFFICIAL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Threads stay below 2^31 (counter word 3, the thread's high word, is 0) and a basis below 2^40
# entries (the loop step li div 4T, counter word 0, stays below 2^32; word 1 is 0): beyond any
# GPU and any basis the official code holds whole.
MAX_RESIDENT_THREADS = 2**31
MAX_OFFICIAL_ENTRIES = 2**40


@dataclasses.dataclass(frozen=True)
class OfficialFamily:
    """The official code's basis as a GPU of `resident_threads` (CudaLayout.resident_threads)
    draws it in `dtype` under `uniform_rule`; the seed is the ops' seed, the stream 0."""

    resident_threads: int
    dtype: torch.dtype = torch.float32
    uniform_rule: str = "current"

    @property
    def name(self):
        """The family's `distribution` name, which parse_official reads back."""
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{OFFICIAL_PREFIX}:{dtype}:{self.uniform_rule}:{self.resident_threads}"

    def threads(self, entries):
        """T of a basis of `entries` = k * rows * cols entries (CudaLayout.total_threads)."""
        return launch_threads(entries, self.resident_threads)


def official_distribution(layout, dtype=torch.float32, uniform_rule="current"):
    """The `distribution` name of the ops for the official basis that `layout` (a CudaLayout or a
    GPU_LAYOUTS name) draws in `dtype` under `uniform_rule`. float32 values are the same under
    both rules: its name always says "current"."""
    layout = resolve_layout(layout)
    if layout == GENERATOR:
        raise ValueError(f"layout must be a CudaLayout or one of {sorted(GPU_LAYOUTS)} for an official family, got {GENERATOR!r}")
    check_uniform_rule(uniform_rule, layout)
    check_layout_dtype(dtype, layout)
    rule = "current" if dtype == torch.float32 else uniform_rule
    return OfficialFamily(layout.resident_threads, dtype, rule).name


def parse_official(distribution):
    """The OfficialFamily that `distribution` names, or None for a name that is not an official
    family's (no "official:" prefix). A malformed official name is a ValueError."""
    if not isinstance(distribution, str) or not distribution.startswith(OFFICIAL_PREFIX + ":"):
        return None
    parts = distribution.split(":")
    if len(parts) == 4 and parts[1] in OFFICIAL_DTYPES and parts[2] in UNIFORM_RULES and _is_threads(parts[3]):
        dtype = OFFICIAL_DTYPES[parts[1]]
        if dtype != torch.float32 or parts[2] == "current":
            return OfficialFamily(int(parts[3]), dtype, parts[2])
    raise ValueError(
        f"distribution {distribution!r} is not an official family's name: expected "
        f"'{OFFICIAL_PREFIX}:<dtype>:<rule>:<resident threads>' with dtype one of {list(OFFICIAL_DTYPES)}, "
        f"rule one of {UNIFORM_RULES} ('current' for float32) and a multiple of {_BLOCK_THREADS} threads in "
        f"[{_BLOCK_THREADS}, 2**31) written in decimal, as official_distribution(layout, dtype, uniform_rule) builds it"
    )


def _is_threads(text):
    # Canonical decimal only, so that one family has one name.
    return text.isascii() and text.isdigit() and str(int(text)) == text and 0 < int(text) < MAX_RESIDENT_THREADS and int(text) % _BLOCK_THREADS == 0


def official_block(family, seed, k, numel, i_start, i_stop, n_start, n_stop, device=None):
    """Entries (i, n), i in [i_start, i_stop), n in [n_start, n_stop), of the family's (k, numel)
    basis: the official code's uniform_(-1, 1) value at li = i * numel + n, in the family's dtype
    and rule, as float32 of shape (i_stop - i_start, n_stop - n_start), unscaled (official_basis
    is the ops' default scale times these, rounded to the dtype)."""
    index = torch.arange(i_start, i_stop, dtype=torch.int64, device=device).unsqueeze(1) * numel
    index = index + torch.arange(n_start, n_stop, dtype=torch.int64, device=device)
    values = _uniform_at(seed, index, family.threads(k * numel))
    return _rounded(values, family.dtype, family.uniform_rule).float()
