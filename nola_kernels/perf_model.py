"""A performance model of nola_matmul's paths on an H100-class GPU, in seconds per pass.

Not a measurement. Each kernel's time is the larger of its arithmetic (generation loops: SASS
instructions and Philox multiplies per generated entry, against the SM's issue and IMAD rates;
GEMMs: FLOPs against the tensor-core or FP32 rate) and its memory traffic (bytes against HBM
bandwidth), plus a fixed gap per launch; a pass costs the larger of its GPU time and the host
time of the ops that queue it. The figures are stated in `H100` below; the loop counts in
`LOOP_COUNTS`, those `make perf-static` measured (`SASS_COUNTS`, bench/results/sass-sm90.json).
`bench/perf_model.py` prints the tables; the backends' `prefers_fused` follows `fused_wins`;
`bench/device_check.sh` measures the same paths so the figures can be corrected.
"""

import functools
import math
from dataclasses import dataclass, replace

from .basis import PHILOX_ROUNDS


@dataclass(frozen=True)
class GpuSpec:
    name: str
    sms: int
    clock_hz: float
    issue_per_clock: int  # thread-instructions issued per clock per SM (4 schedulers x 32 lanes)
    imad_per_clock: int  # IMAD / IMAD.HI per clock per SM
    hbm_bytes_per_s: float  # sustained, not peak
    gemm_flops_per_s: dict  # reached by large cuBLAS GEMMs, by operand precision
    simt_flops_per_s: float  # csrc/gemm.cu's float32 FMA GEMM (see _simt_gemm)
    launch_gap_s: float  # GPU time a kernel adds beside its work
    host_s: dict  # host time to queue one op, by kind


# H100 SXM: 132 SMs at 1.98 GHz, 128 issue and 64 IMAD slots per clock per SM, HBM3 3.35 TB/s
# peak (2.7 sustained), dense bfloat16 989 TFLOP/s peak of which large GEMMs reach about 740
# (the figures of the outside review, shared/notes/performance.md). TF32 (494.7 TFLOP/s dense),
# FP32 (66.9) and FP64 tensor (66.9) are NVIDIA's datasheet figures, at the same 75% reached. The
# launch gap and host times are assumptions (eager PyTorch), to be replaced by measurements.
_SMS, _CLOCK, _ISSUE = 132, 1.98e9, 128
H100 = GpuSpec(
    name="H100 SXM",
    sms=_SMS,
    clock_hz=_CLOCK,
    issue_per_clock=_ISSUE,
    imad_per_clock=64,
    hbm_bytes_per_s=2.7e12,
    gemm_flops_per_s={"bfloat16": 740e12, "float16": 740e12, "tf32": 371e12, "float32": 50e12, "float64": 50e12},
    # csrc/gemm.cu's inner loop issues 6 shared loads per 8 FMAs (16 FLOP in 14 instructions); with
    # no double buffering and a barrier per 16-wide step it reaches about 40% of that, which puts
    # its products at the review's ~100 us forward / ~300 us backward at LLaMA-2-7B q_proj.
    simt_flops_per_s=_SMS * _CLOCK * _ISSUE * 16 / 14 * 0.4,
    launch_gap_s=2e-6,
    host_s={"aten": 5e-6, "custom_op": 15e-6, "triton_launch": 8e-6, "cuda_launch": 3e-6},
)
# H200 SXM: the same SMs and clocks with HBM3e at 4.8 TB/s peak (NVIDIA's datasheet), taken at
# the H100's sustained fraction.
H200 = replace(H100, name="H200 SXM", hbm_bytes_per_s=4.8e12 * 2.7 / 3.35)

# A Philox4x32 round: two 32x32->64-bit products, each 2 IMAD slots (10 rounds for v1's
# distributions, 7 for v1.1's: PHILOX_ROUNDS).
IMAD_SLOTS_PER_ROUND = 4


@dataclass(frozen=True)
class LoopCount:
    """The hot loop of one generation kernel, per generated entry."""

    sass_per_entry: float
    philox_calls_per_entry: float
    source: str


def _measured(sass, calls):
    return LoopCount(sass, calls, "measured: bench/results/sass-sm90.json (make perf-static)")


# The Triton fused kernels (triton/kernels/lowrank.py), as bench/sass names them.
TRITON_FUSED_KERNELS = ("fused A forward", "fused B forward", "fused A backward", "fused B backward")
# (kernel, backend, distribution) -> its hot loop as `make perf-static` measured it, named as
# bench/sass names it: "mix", "project", "mix+project" (the CUDA backward's one pass over the
# basis) and TRITON_FUSED_KERNELS. Where bench/sass compiles a kernel at both shapes, the slower
# loop. bench/test_perf_model.py checks this table against bench/results/sass-sm90.json.
SASS_COUNTS = {
    ("mix", "cuda", "uniform"): _measured(14.438, 0.22812),
    ("project", "cuda", "uniform"): _measured(14.25, 0.19062),
    ("mix+project", "cuda", "uniform"): _measured(17.375, 0.22812),
    ("mix", "cuda", "rademacher"): _measured(3.656, 0.00625),
    ("project", "cuda", "rademacher"): _measured(3.672, 0.00625),
    ("mix+project", "cuda", "rademacher"): _measured(6.93, 0.00625),
    ("mix", "cuda", "uniform16_philox7"): _measured(7.906, 0.10938),
    ("project", "cuda", "uniform16_philox7"): _measured(7.625, 0.08259),
    ("mix+project", "cuda", "uniform16_philox7"): _measured(9.062, 0.09598),
    ("mix", "cuda", "rademacher_philox7"): _measured(3.562, 0.00558),
    ("project", "cuda", "rademacher_philox7"): _measured(3.578, 0.00558),
    ("mix+project", "cuda", "rademacher_philox7"): _measured(6.781, 0.00558),
    ("mix", "cuda", "official:float32"): _measured(64.25, 1.0),
    ("project", "cuda", "official:float32"): _measured(67.0, 1.0),
    ("mix", "triton", "uniform"): _measured(17.188, 0.19062),
    ("project", "triton", "uniform"): _measured(18.5, 0.19062),
    ("mix", "triton", "rademacher"): _measured(3.445, 0.00625),
    ("project", "triton", "rademacher"): _measured(3.586, 0.00625),
    ("mix", "triton", "uniform16_philox7"): _measured(8.125, 0.08259),
    ("project", "triton", "uniform16_philox7"): _measured(9.156, 0.08259),
    ("mix", "triton", "rademacher_philox7"): _measured(3.312, 0.00558),
    ("project", "triton", "rademacher_philox7"): _measured(3.453, 0.00558),
    ("fused A forward", "triton", "uniform"): _measured(17.0, 0.19062),
    ("fused B forward", "triton", "uniform"): _measured(17.0, 0.19062),
    ("fused A backward", "triton", "uniform"): _measured(19.188, 0.19062),
    ("fused B backward", "triton", "uniform"): _measured(19.438, 0.19375),
    ("fused A forward", "triton", "rademacher"): _measured(3.406, 0.00625),
    ("fused B forward", "triton", "rademacher"): _measured(3.43, 0.00625),
    ("fused A backward", "triton", "rademacher"): _measured(6.695, 0.00625),
    ("fused B backward", "triton", "rademacher"): _measured(6.992, 0.00625),
    ("fused A forward", "triton", "uniform16_philox7"): _measured(8.0, 0.08259),
    ("fused B forward", "triton", "uniform16_philox7"): _measured(8.25, 0.08929),
    ("fused A backward", "triton", "uniform16_philox7"): _measured(9.656, 0.08259),
    ("fused B backward", "triton", "uniform16_philox7"): _measured(10.062, 0.08482),
    ("fused A forward", "triton", "rademacher_philox7"): _measured(3.289, 0.00558),
    ("fused B forward", "triton", "rademacher_philox7"): _measured(3.312, 0.00558),
    ("fused A backward", "triton", "rademacher_philox7"): _measured(6.547, 0.00558),
    ("fused B backward", "triton", "rademacher_philox7"): _measured(6.844, 0.00558),
}
# The loops the model prices: every kernel of every path, by (kernel, backend, distribution).
LOOP_COUNTS = SASS_COUNTS


@dataclass(frozen=True)
class Step:
    """One queued op: its GPU seconds and the kind of host call that queues it (None: queued by
    the op before it, inside one call)."""

    name: str
    gpu_s: float
    host: str | None


class _Cost:
    """The kernels of one pass of one path at one shape."""

    def __init__(self, gpu, shape, counts):
        self.gpu, self.shape, self.counts = gpu, shape, counts
        self.x_bytes = shape.dtype.itemsize
        self.entries_a = shape.k * shape.rank * shape.in_features
        self.entries_b = shape.l * shape.out_features * shape.rank
        self.imad_slots_per_call = IMAD_SLOTS_PER_ROUND * PHILOX_ROUNDS[shape.distribution]

    def memory_s(self, nbytes, fill=1.0):
        return nbytes / (self.gpu.hbm_bytes_per_s * fill)

    def elementwise(self, name, nbytes, host="aten"):
        return Step(name, self.memory_s(nbytes), host)

    def generation_s(self, kernel, backend, entries, fill=1.0):
        loop = self.counts[(kernel, backend, self.shape.distribution)]
        per_sm_clock = min(
            self.gpu.issue_per_clock / loop.sass_per_entry,
            self.gpu.imad_per_clock / (loop.philox_calls_per_entry * self.imad_slots_per_call),
        )
        return entries / (per_sm_clock * self.gpu.sms * self.gpu.clock_hz * fill)

    def gemm(self, name, m, n, k, beta_reads_c=False, out_bytes=None, host="aten"):
        """A cuBLAS GEMM with operands in x's dtype (torch's default precision: no TF32)."""
        s = self.x_bytes
        out_bytes = s if out_bytes is None else out_bytes
        nbytes = (m * k + k * n) * s + m * n * out_bytes * (2 if beta_reads_c else 1)
        rate = self.gpu.gemm_flops_per_s[str(self.shape.dtype).removeprefix("torch.")]
        return Step(name, max(self.memory_s(nbytes), 2 * m * n * k / rate), host)

    def simt_gemm(self, name, m, n, k, a_bytes, b_bytes, c_bytes):
        """csrc/gemm.cu: 64 x 32 tiles, 16-wide steps, a split over k into float32 partials (summed
        by a second kernel) when the tiles alone would not fill the GPU."""
        tiles = math.ceil(m / 64) * math.ceil(n / 32)
        splits = 1
        if tiles < 2 * self.gpu.sms:
            splits = max(1, min(math.ceil(2 * self.gpu.sms / tiles), math.ceil(k / 256), (1 << 22) // (m * n)))
        flops = 2 * math.ceil(m / 64) * 64 * math.ceil(n / 32) * 32 * math.ceil(k / 16) * 16
        fill = min(1.0, tiles * splits / (2 * self.gpu.sms))
        nbytes = m * k * a_bytes + k * n * b_bytes + m * n * (4 * splits if splits > 1 else c_bytes)
        steps = [Step(name, max(self.memory_s(nbytes), flops / (self.gpu.simt_flops_per_s * fill)), "cuda_launch")]
        if splits > 1:
            steps.append(self.elementwise(f"{name}: partial sums", m * n * (4 * splits + c_bytes), "cuda_launch"))
        return steps

    def cuda_generate(self, kernel, entries, numel, k, projects):
        """csrc/generate.cu: up to 4 blocks per SM over slices of 512 (uniform) or 1024 (the
        other distributions) positions, a k-split when the slices alone would not fill the GPU, partial
        sums in a second kernel."""
        per_slice = 512 if self.shape.distribution == "uniform" else 1024
        wanted = 4 * self.gpu.sms
        blocks = min(math.ceil(numel / per_slice), wanted)
        splits = 1 if blocks >= wanted else min(math.ceil(wanted / blocks), math.ceil(k / 32))
        fill = min(1.0, blocks * splits / (2 * self.gpu.sms))  # 16 warps per SM issue at full rate
        steps = [Step(kernel, self.generation_s(kernel, "cuda", entries, fill), "cuda_launch")]
        if splits > 1 and kernel != "project":
            steps.append(self.elementwise(f"{kernel}: mix partial sums", numel * 4 * (splits + 1), "cuda_launch"))
        if projects:
            steps.append(self.elementwise(f"{kernel}: projection partial sums", blocks * k * 4, "cuda_launch"))
        return steps


def _triton_parts(shape):
    """Programs of the Triton fused grid: in / a_slice on A's side, out / b_slice on B's."""
    rank_block = max(16, 1 << (shape.rank - 1).bit_length())
    a_slice = min(128 if rank_block <= 32 else 64, max(16, 1 << (shape.in_features - 1).bit_length()))
    b_slice = min(64, max(16, 1 << (shape.out_features - 1).bit_length()))
    return math.ceil(shape.in_features / a_slice), math.ceil(shape.out_features / b_slice)


def _lora_products(c, fold, backward):
    """The products every low-rank delta shares: cast factors, x A^T, h B^T (and the add of a
    layer when fold), then in the backward grad_h, grad_B, grad_A and grad_x (x takes a gradient,
    as inside a network)."""
    t, i, o, r, s = c.shape.tokens, c.shape.in_features, c.shape.out_features, c.shape.rank, c.x_bytes
    if not backward:
        casts = [] if s == 4 else [c.elementwise("A to x's dtype", r * i * (4 + s)), c.elementwise("B to x's dtype", o * r * (4 + s))]
        return [
            c.elementwise("B * scaling", o * r * 8),
            *casts,
            c.gemm("h = x A^T", t, r, i),
            c.gemm("base + h B^T (addmm)" if fold else "h B^T", t, o, r, beta_reads_c=fold),
        ]
    return [
        c.gemm("grad_h = grad B", t, r, o),
        c.gemm("grad_B = grad^T h", o, r, t),
        c.gemm("grad_A = grad_h^T x", r, i, t),
        c.elementwise("factor gradients to float32, scaling", (r * i + 2 * o * r) * 8),
        c.gemm("grad_x = grad_h A", t, i, r),
    ]


def _composed(c, fold, backward, backend):
    """Mix kernels for A (plus a0) and B, then cuBLAS products; the backward projects grad_A and
    grad_B onto the bases."""
    r, i, o, k, l = c.shape.rank, c.shape.in_features, c.shape.out_features, c.shape.k, c.shape.l  # noqa: E741

    def generate(kernel, entries, numel, basis):
        if backend == "cuda":
            steps = c.cuda_generate(kernel, entries, numel, basis, kernel == "project")
        else:
            steps = [Step(kernel, c.generation_s(kernel, "triton", entries), "triton_launch")]
            steps.append(c.elementwise(f"{kernel}: partial sums", 4 * numel if kernel == "mix" else 4 * 528 * basis))
        return [replace(steps[0], host="custom_op"), *steps[1:]]  # the op's Python call queues it

    if not backward:
        return [
            *generate("mix", c.entries_a, r * i, k),
            c.elementwise("A = a0 + mix", r * i * 12),
            *generate("mix", c.entries_b, o * r, l),
            *_lora_products(c, fold, False),
        ]
    return [
        *_lora_products(c, fold, True),
        *generate("project", c.entries_a, r * i, k),
        *generate("project", c.entries_b, o * r, l),
    ]


def _cuda_fused(c, fold, backward):
    """csrc/lowrank.cu: each factor generated once per call, products on csrc/gemm.cu."""
    t, i, o, r, s = c.shape.tokens, c.shape.in_features, c.shape.out_features, c.shape.rank, c.x_bytes
    k, l = c.shape.k, c.shape.l  # noqa: E741
    op = Step("lowrank op", 0.0, "custom_op")
    if not backward:
        return [
            op,
            *c.cuda_generate("mix", c.entries_a, r * i, k, False),
            *c.cuda_generate("mix", c.entries_b, o * r, l, False),
            *c.simt_gemm("h = x A^T", t, r, i, s, 4, 4),
            *c.simt_gemm("delta = scaling h B^T", t, o, r, 4, 4, s),
        ]
    return [
        op,
        *c.simt_gemm("grad_b = scaling grad^T h", o, r, t, s, 4, 4),
        *c.cuda_generate("mix+project", c.entries_b, o * r, l, True),
        *c.simt_gemm("grad_h = scaling grad B", t, r, o, s, 4, 4),
        *c.simt_gemm("grad_a = grad_h^T x", r, i, t, 4, s, 4),
        *c.cuda_generate("mix+project", c.entries_a, r * i, k, True),
        *c.simt_gemm("grad_x = grad_h A", t, i, r, 4, 4, s),
    ]


def _triton_fused(c, fold, backward):
    """triton/kernels/lowrank.py: in / a_slice programs on A's side and out / b_slice on B's, each
    generating its slice of the factor, then streaming over the tokens; NaN-filled outputs."""
    t, i, o, r, s = c.shape.tokens, c.shape.in_features, c.shape.out_features, c.shape.rank, c.x_bytes
    a_parts, b_parts = _triton_parts(c.shape)
    fill_a, fill_b = min(1.0, a_parts / c.gpu.sms), min(1.0, b_parts / c.gpu.sms)

    def launch(kernel, entries, fill, streamed_bytes):
        # An SM draws at most about twice its share of the bandwidth.
        gen = c.generation_s(kernel, "triton", entries, fill)
        return Step(kernel, gen + c.memory_s(streamed_bytes, min(1.0, 2 * fill)), "triton_launch")

    if not backward:
        return [
            Step("lowrank op", 0.0, "custom_op"),
            c.elementwise("NaN fill: h partials", a_parts * t * r * 4),
            launch("fused A forward", c.entries_a, fill_a, t * i * s),
            c.elementwise("h = sum of partials", a_parts * t * r * 4),
            c.elementwise("NaN fill: delta", t * o * s),
            launch("fused B forward", c.entries_b, fill_b, t * o * s),
        ]
    return [
        Step("lowrank op", 0.0, "custom_op"),
        c.elementwise("NaN fills: grad_b, partials", b_parts * t * r * 4),
        launch("fused B backward", c.entries_b, fill_b, 2 * t * o * s),
        c.elementwise("grad_h = sum of partials", b_parts * t * r * 4),
        c.elementwise("NaN fills: grad_a, grad_x", t * i * s),
        launch("fused A backward", c.entries_a, fill_a, 3 * t * i * s),
        c.elementwise("coefficient partial sums", 4 * (a_parts * c.shape.k + b_parts * c.shape.l)),
    ]


def _official(c, fold, backward):
    """nola_kernels.reference.official_matmul: torch's RNG over the whole (k, R, C) basis in float32,
    scaled in place, then einsum; the backward draws it again."""
    steps = []
    for name, entries in (("A", c.entries_a), ("B", c.entries_b)):
        steps += [
            c.elementwise(f"basis {name}: uniform_", entries * 4),
            c.elementwise(f"basis {name}: mul_", entries * 8),
            c.elementwise(f"basis {name}: einsum", entries * 4),
        ]
    return steps + _lora_products(c, False, backward)


# Each path's steps, given (cost, fold, backward). LoRA is PEFT's layer: a separate add.
PATHS = {
    "lora": _lora_products,
    "official": _official,
    "cuda-fused": _cuda_fused,
    "cuda-composed": functools.partial(_composed, backend="cuda"),
    "triton-fused": _triton_fused,
    "triton-composed": functools.partial(_composed, backend="triton"),
}
# Paths that can take the layer's add into their last GEMM (nola_matmul's add_to).
FOLDS_ADD = ("cuda-composed", "triton-composed")


def _base_layer(c, backward):
    """The frozen base layer x W^T; its backward computes grad_x only, and autograd adds the
    delta's grad_x to it."""
    t, i, o, s = c.shape.tokens, c.shape.in_features, c.shape.out_features, c.x_bytes
    if not backward:
        return [c.gemm("base x W^T", t, o, i)]
    return [c.gemm("base grad_x = grad W", t, i, o), c.elementwise("grad_x of base + delta", 3 * t * i * s)]


def pass_steps(path, shape, *, layer, backward, fold=True, gpu=H100, counts=LOOP_COUNTS):
    """The steps of one pass (forward, or the backward after it) of `path` at `shape`, the delta
    alone or (layer) inside base(x) + delta. fold: the add goes into the delta's last GEMM where
    the path allows it (False: main's composed path, a separate add)."""
    c = _Cost(gpu, shape, counts)
    folds = fold and layer and path in FOLDS_ADD
    steps = PATHS[path](c, fold=folds, backward=backward)
    if layer:
        steps = _base_layer(c, backward) + steps
        if not backward and not folds:
            steps.append(c.elementwise("base + delta", 3 * shape.tokens * shape.out_features * c.x_bytes))
    return steps


def total_s(steps, gpu=H100):
    """GPU time (work plus a launch gap per kernel), or the host's time to queue it if longer."""
    device = sum(step.gpu_s + gpu.launch_gap_s for step in steps if step.gpu_s > 0)
    host = sum(gpu.host_s[step.host] for step in steps if step.host is not None)
    return max(device, host)


def predict_s(path, shape, *, layer=False, backward=True, fold=True, gpu=H100, counts=LOOP_COUNTS):
    """Seconds of the forward (backward=False) or forward + backward of `path` at `shape`."""
    passes = (False, True) if backward else (False,)
    return sum(
        total_s(pass_steps(path, shape, layer=layer, backward=b, fold=fold, gpu=gpu, counts=counts), gpu)
        for b in passes
    )


_decisions = {}  # a dict, not functools.lru_cache: torch.compile traces through a dict


def fused_wins(backend, shape):
    """Whether backend's fused path beats its composed path (mix kernels, then cuBLAS) for the
    forward + backward at `shape` (a LowRankShape), by this model on an H100: of the delta, or of
    the whole layer where the product adds into its output (shape.adds)."""
    key = (backend, shape)
    if key not in _decisions:
        fused, composed = (predict_s(f"{backend}-{path}", shape, layer=shape.adds) for path in ("fused", "composed"))
        _decisions[key] = shape.tokens > 0 and fused < composed
    return _decisions[key]



# A whole model's step with grouped generation (nola_kernels.group_generation): each family of
# shared bases is mixed once per forward for all its layers and projected once per backward. The
# grouped kernels' products coeffs (G x k) @ U (k x n) are taken at GROUPED_DOT_RATE (assumed:
# float32 FMA, the slowest their precision rule allows), beside generating each entry once (the
# CUDA mix / project loop counts) and their traffic, whichever is longest.
GROUPED_DOT_RATE = "float32"
MODEL_PATHS = ("lora", "nola-grouped", "cuda-fused", "cuda-composed", "triton-composed")


@dataclass(frozen=True)
class ModelSpec:
    """The adapted linears of one block (LowRankShapes: tokens, sizes, rank, k, l, dtype) and the
    number of blocks. With share_basis every linear of one shape shares its A family and its B
    family across all blocks."""

    name: str
    blocks: int
    linears: tuple

    def families(self):
        """{(role, rows, cols, basis size, in_features, out_features): layers}: the seeds derive
        from the layer's shape, so A of a 4096 x 4096 and of a 4096 x 11008 layer are two families."""
        families = {}
        for shape in self.linears:
            sizes = (shape.in_features, shape.out_features)
            a_key = ("A", shape.rank, shape.in_features, shape.k, *sizes)
            b_key = ("B", shape.out_features, shape.rank, shape.l, *sizes)
            for key in (a_key, b_key):
                families[key] = families.get(key, 0) + self.blocks
        return families


def _grouped_family(c, role, rows, cols, basis, layers, backward):
    """One grouped mix (forward, then a0 added to the stacked A) or projection (backward)."""
    entries, numel = basis * rows * cols, layers * rows * cols
    kernel = "project" if backward else "mix"
    dot_s = 2 * layers * entries / c.gpu.gemm_flops_per_s[GROUPED_DOT_RATE]
    work_s = max(c.generation_s(kernel, "cuda", entries), dot_s, c.memory_s(4 * (numel + layers * basis)))
    steps = [Step(f"grouped {kernel} {role} {rows}x{cols} ({layers} layers)", work_s, "custom_op")]
    if role == "A" and not backward:
        steps.append(c.elementwise("A = a0 + mix, stacked", numel * 12))
    return steps


def model_pass_steps(spec, path, *, backward, gpu=H100, counts=LOOP_COUNTS):
    """One pass over every adapted linear of `spec` (base GEMM and adapter; attention, norms and
    the optimizer are the same for every path and left out). path: "lora" (PEFT's layer),
    "nola-grouped" (the products with the add in the last GEMM, and one grouped kernel per family),
    or a nola_matmul path of PATHS run per layer."""
    steps = []
    for shape in spec.linears:
        if path == "nola-grouped":
            c = _Cost(gpu, shape, counts)
            layer = _base_layer(c, backward) + _lora_products(c, True, backward)
        else:
            layer = pass_steps(path, shape, layer=True, backward=backward, gpu=gpu, counts=counts)
        steps += layer * spec.blocks
    if path == "nola-grouped":
        c = _Cost(gpu, spec.linears[0], counts)
        for (role, rows, cols, basis, _, _), layers in spec.families().items():
            steps += _grouped_family(c, role, rows, cols, basis, layers, backward)
    return steps


def model_step_s(spec, path, *, gpu=H100, counts=LOOP_COUNTS):
    """Predicted seconds of one forward + backward of `spec`'s adapted linears on `path`."""
    return sum(
        total_s(model_pass_steps(spec, path, backward=b, gpu=gpu, counts=counts), gpu) for b in (False, True)
    )
