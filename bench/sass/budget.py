"""The SASS budget of the hot generation loops (sm_90): each loop's instructions and Philox calls
per generated entry, against a reference loop that generates the same entries with the minimum
work (bench/sass/references.py and references.cu) and against the contract's minimum calls."""

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nola_kernels.basis import COUNTER_SHIFT, DISTRIBUTIONS, PHILOX_ROUNDS
from nola_kernels.triton_kernels import grouped, lowrank, mix_project
from nola_kernels.triton_kernels.launch import BLOCK_I, MIX_WARPS, PROJECT_WARPS, flat_block

from . import hopper, references
from .disasm import LoopCount, parse

SASS_RATIO = 1.15  # a loop's instructions per entry, at most this times its reference's
PHILOX_RATIO = 1.25  # its Philox calls per entry, at most this times the contract's minimum

# Loops over budget for a known reason: reported, but they do not fail the run; one that comes
# within budget does, until it leaves this list, so the list cannot outlive its reasons.
KNOWN_OVER_BUDGET = {}


@dataclass(frozen=True)
class Layer:
    in_features: int
    out_features: int
    rank: int
    dtype: torch.dtype
    tokens: int


# The layer shapes (k = l = 512 at both; k does not change a specialization).
SHAPES = {
    "gpt2-medium": Layer(1024, 1024, 8, torch.float32, 512),
    "llama2-7b-q": Layer(4096, 4096, 16, torch.bfloat16, 4096),
}


@dataclass(frozen=True)
class Loop:
    """One hot loop: which kernel, what it generates per thread per iteration, and how."""

    kernel: str
    backend: str
    distribution: str
    shapes: tuple
    mix: bool
    project: bool
    entries_per_iteration: int  # per thread
    compile: object  # () -> (SASS text, function name)
    # Rows that share each generated entry (the grouped kernels): SASS counts per entry and row,
    # against a reference of one FMA per entry and row. `reference_rows` of those rows are in the
    # compiled reference loop itself; one FMA per entry is added for each of the others.
    rows: int = 1
    reference_rows: int = 1


@dataclass(frozen=True)
class Row:
    kernel: str
    backend: str
    distribution: str
    shapes: list
    entries_per_iteration: int
    sass_per_iteration: int
    sass_per_entry: float
    philox_calls_per_entry: float
    barriers_per_iteration: int
    shared_accesses_per_iteration: int
    bound_sass_per_entry: float
    minimum_philox_calls_per_entry: float
    within_budget: bool
    known_over_budget: str  # the reason, where KNOWN_OVER_BUDGET lists the loop
    rows: int = 1

    @property
    def fails(self):
        return self.within_budget == bool(self.known_over_budget)


# The official CUDA layout families' loops (csrc/official.cu), in float32 (the drop-in's path through
# the ops): each entry is its own Philox4x32-10 call, so their minimum is one call per entry.
OFFICIAL_FLOAT32 = "official:float32"
_OFFICIAL_ROUNDS = 10


def _entries_per_call(distribution):
    return 1 if distribution == OFFICIAL_FLOAT32 else 1 << COUNTER_SHIFT[distribution]


def _rounds(distribution):
    return _OFFICIAL_ROUNDS if distribution == OFFICIAL_FLOAT32 else PHILOX_ROUNDS[distribution]


def _triton(kernel, activation, constexprs, num_warps, num_stages=3):
    def compile_loop():
        compiled = hopper.compile_triton(kernel, activation, constexprs, num_warps, num_stages)
        return hopper.disassemble(compiled.asm["cubin"]), compiled.metadata.name

    return compile_loop


def _triton_reference(loop, num_warps):
    constexprs = dict(
        CALLS=_reference_calls_per_thread(loop) * 32 * num_warps, DISTRIBUTION=loop.distribution, MIX=loop.mix,
        PROJECT=loop.project,
    )  # fmt: skip
    return _triton(references.reference_kernel, "fp32", constexprs, num_warps)


def _flat_loops():
    """mix_project's kernels: their blocks depend on the distribution alone, so both shapes
    launch the same specialization."""
    for distribution in DISTRIBUTIONS:
        for name, kernel, warps, mix in (
            ("mix", mix_project._mix_kernel, MIX_WARPS, True),
            ("project", mix_project._project_kernel, PROJECT_WARPS, False),
        ):
            block = flat_block(1, distribution, warps)
            constexprs = dict(BLOCK=block, BLOCK_I=BLOCK_I, DISTRIBUTION=distribution)
            yield (
                Loop(name, "triton", distribution, tuple(SHAPES), mix, not mix, block * BLOCK_I // (32 * warps),
                     _triton(kernel, "fp32", constexprs, warps)),
                warps,
            )  # fmt: skip


_FUSED = (
    ("fused A forward", lowrank._a_forward, "a", False),
    ("fused B forward", lowrank._b_forward, "b", False),
    ("fused A backward", lowrank._a_backward, "a", True),
    ("fused B backward", lowrank._b_backward, "b", True),
)


def _fused_loops():
    """lowrank's kernels at each shape as its launch plans them."""
    for (shape, layer), distribution in itertools.product(SHAPES.items(), DISTRIBUTIONS):
        x = torch.empty(layer.tokens, layer.in_features, dtype=layer.dtype, device="meta")
        plan = lowrank._Plan(x, layer.rank, layer.out_features, distribution)
        for name, kernel, side, backward in _FUSED:
            kwargs = dict(plan.a_kwargs if side == "a" else plan.b_kwargs)
            warps, stages = kwargs.pop("num_warps"), kwargs.pop("num_stages")
            tile = kwargs["RANK_GEN"] * kwargs["SLICE"] * kwargs["BLOCK_I"]
            activation = hopper.ACTIVATIONS[layer.dtype]
            yield (
                Loop(name, "triton", distribution, (shape,), True, backward, tile // (32 * warps),
                     _triton(kernel, activation, {**kwargs, "HAS_OFFSET": True}, warps, stages)),
                warps,
            )  # fmt: skip


# Row counts of the grouped kernels at GPT-2 medium with shared bases (q and v of 6 or 24 layers):
# they launch the 16- and 64-row specializations, the same at both shapes.
GROUPED_ROWS = (12, 48)


def _grouped_triton_loops():
    """grouped's tl.dot kernels: per thread, the generated tile's entries over the threads."""
    for distribution in DISTRIBUTIONS:
        for name, kernel, tiles in (
            ("grouped mix", grouped._mix_kernel, grouped.MIX_TILE),
            ("grouped project", grouped._project_kernel, grouped.PROJECT_TILE),
        ):
            block_i, width = tiles[distribution]
            for rows in GROUPED_ROWS:
                constexprs = dict(
                    ROWS=grouped.rows_per_program(rows), BLOCK_I=block_i, WIDTH=width,
                    DISTRIBUTION=distribution,
                )  # fmt: skip
                entries = block_i * width // (32 * grouped.GROUPED_WARPS)
                compile_loop = _triton(kernel, "fp32", constexprs, grouped.GROUPED_WARPS, grouped.GROUPED_STAGES)
                mix = name.endswith("mix")
                yield (
                    Loop(f"{name} ({rows} rows)", "triton", distribution, tuple(SHAPES), mix, not mix, entries,
                         compile_loop, rows),
                    grouped.GROUPED_WARPS,
                )  # fmt: skip


# Entries a lane generates per iteration of its basis loop: in generate.cu, one basis index of
# kPerLane * kEntries entries (uniform: 4 x 4, uniform16: 4 x 8) or four of 32 (rademacher), times
# the basis indices an iteration takes (kWalkSteps: uniform16's mix+project, 2); in philox_rate.cu,
# kChains calls of 4.
CUDA_ENTRIES_PER_ITERATION = {"uniform": 16, "rademacher": 4 * 32, "uniform16_philox7": 32, "rademacher_philox7": 4 * 32}
CUDA_STEPS_PER_ITERATION = {("mix+project", "uniform16_philox7"): 2}
PHILOX_RATE_ENTRIES_PER_ITERATION = 16
_CUDA_MODES = (("mix", True, False), ("project", False, True), ("mix+project", True, True))


def _cuda_function(source, wanted):
    """compile() of the kernel in `source` whose demangled name starts with `wanted`."""

    def compile_loop():
        sass = hopper.disassemble(hopper.compile_cuda(source))
        names = list(parse(sass))
        for name, readable in zip(names, hopper.demangle(names), strict=True):
            if wanted in readable.replace("nola::(anonymous namespace)::", "").replace("nola::", ""):
                return sass, name
        raise LookupError(f"{wanted} not in {source.name}")

    return compile_loop


# nola::Distribution (csrc/philox.cuh) of each contract name, as c++filt prints template arguments.
CUDA_DISTRIBUTION_CODES = {"uniform": 0, "rademacher": 1, "uniform16_philox7": 2, "rademacher_philox7": 3}


def _template(name, distribution, mix, project):
    code = CUDA_DISTRIBUTION_CODES[distribution]
    return f"{name}<(Distribution){code}, {str(mix).lower()}, {str(project).lower()}>"


def _cuda_loops():
    for distribution in DISTRIBUTIONS:
        for name, mix, project in _CUDA_MODES:
            wanted = _template("generate_kernel", distribution, mix, project)
            entries = CUDA_ENTRIES_PER_ITERATION[distribution] * CUDA_STEPS_PER_ITERATION.get((name, distribution), 1)
            yield Loop(name, "cuda", distribution, tuple(SHAPES), mix, project, entries,
                       _cuda_function(hopper.CSRC / "generate.cu", wanted))  # fmt: skip
    # A lane's positions per basis index (csrc/official.cu, kPositionsPerLane): 4 mix, 8 project.
    for name, mix, project in _CUDA_MODES[:2]:
        wanted = f"official_kernel<(OfficialDtype)0, false, {str(mix).lower()}, {str(project).lower()}>"
        yield Loop(name, "cuda", OFFICIAL_FLOAT32, tuple(SHAPES), mix, project, 8 if project else 4,
                   _cuda_function(hopper.CSRC / "official.cu", wanted))  # fmt: skip
    yield Loop("philox_rate (bound)", "cuda", "uniform", tuple(SHAPES), True, False, PHILOX_RATE_ENTRIES_PER_ITERATION,
               _cuda_function(hopper.CSRC / "philox_rate.cu", "philox_rate_kernel"))  # fmt: skip


# csrc/grouped.cu's kernels in the rows per chunk their launches take at both shapes for G = 12..48
# (every G > 8): kernel, distribution, rows, entries a lane generates per iteration (uniform mix: one
# call; rademacher mix: its share of four indices' calls; projection: one call for each of 4 indices).
CUDA_GROUPED_LOOPS = (
    ("grouped mix", "uniform", 16, 4),
    ("grouped mix", "rademacher", 2, 128),
    ("grouped mix", "uniform16_philox7", 8, 8),
    ("grouped mix", "rademacher_philox7", 2, 128),
    ("grouped project", "uniform", 16, 16),
    ("grouped project", "rademacher", 4, 512),
    ("grouped project", "uniform16_philox7", 16, 32),
    ("grouped project", "rademacher_philox7", 4, 512),
)


def _grouped_template(mix, distribution, rows, suffix):
    code = CUDA_DISTRIBUTION_CODES[distribution]
    return f"{'mix' if mix else 'project'}_grouped_{suffix}<(Distribution){code}, {rows}>"


def _is_grouped(loop):
    return loop.backend == "cuda" and loop.kernel.startswith("grouped")


def _cuda_grouped_loops():
    for kernel, distribution, rows, entries in CUDA_GROUPED_LOOPS:
        mix = kernel.endswith("mix")
        compile_loop = _cuda_function(hopper.CSRC / "grouped.cu", _grouped_template(mix, distribution, rows, "kernel"))
        yield Loop(kernel, "cuda", distribution, tuple(SHAPES), mix, not mix, entries, compile_loop, rows, rows)


def _cuda_reference(loop):
    if _is_grouped(loop):
        wanted = _grouped_template(loop.mix, loop.distribution, loop.rows, "reference")
        return _cuda_function(Path(__file__).with_name("references.cu"), wanted)
    if loop.distribution == OFFICIAL_FLOAT32:
        wanted = f"official_reference_kernel<{str(loop.mix).lower()}, {str(loop.project).lower()}>"
    else:
        wanted = _template("reference_kernel", loop.distribution, loop.mix, loop.project)
    return _cuda_function(Path(__file__).with_name("references.cu"), wanted)


def _measure(compile_loop):
    sass, name = compile_loop()
    return LoopCount.of(parse(sass)[name])


def _row(loop, count, reference):
    entries = loop.entries_per_iteration
    sass_per_entry = count.instructions / (entries * loop.rows)
    calls_per_entry = count.philox_calls(_rounds(loop.distribution)) / entries
    bound = (reference.instructions / _reference_entries(loop) + loop.rows - loop.reference_rows) / loop.rows
    minimum_calls = 1 / _entries_per_call(loop.distribution)
    return Row(
        loop.kernel, loop.backend, loop.distribution, list(loop.shapes), entries, count.instructions,
        round(sass_per_entry, 3), round(calls_per_entry, 5), count.barriers, count.shared_accesses, round(bound, 3),
        minimum_calls, sass_per_entry <= SASS_RATIO * bound and calls_per_entry <= PHILOX_RATIO * minimum_calls,
        KNOWN_OVER_BUDGET.get((loop.backend, loop.kernel, loop.distribution), ""), loop.rows,
    )  # fmt: skip


# Entries per thread per iteration of references.cu (Reference<D>::kCalls * kEntries).
CUDA_REFERENCE_ENTRIES = {
    "uniform": 16, "rademacher": 128, "uniform16_philox7": 32, "rademacher_philox7": 128, OFFICIAL_FLOAT32: 4,
}  # fmt: skip


def _reference_entries(loop):
    if _is_grouped(loop):
        return loop.entries_per_iteration  # the grouped references generate a lane's entries
    if loop.backend == "cuda":
        return CUDA_REFERENCE_ENTRIES[loop.distribution]
    return _reference_calls_per_thread(loop) * _entries_per_call(loop.distribution)


def _reference_calls_per_thread(loop):
    return max(1, loop.entries_per_iteration // _entries_per_call(loop.distribution))


def measure(backends=("triton", "cuda")):
    """Every hot loop's Row: the kernels and their references compiled two at a time."""
    loops, compiles = [], []
    if "triton" in backends:
        for loop, warps in [*_flat_loops(), *_fused_loops(), *_grouped_triton_loops()]:
            loops.append(loop)
            compiles.append((loop.compile, _triton_reference(loop, warps)))
    if "cuda" in backends:
        for loop in [*_cuda_loops(), *_cuda_grouped_loops()]:
            loops.append(loop)
            compiles.append((loop.compile, _cuda_reference(loop)))
    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(lambda pair: (_measure(pair[0]), _measure(pair[1])), compiles))
    return [_row(loop, count, reference) for loop, (count, reference) in zip(loops, counts, strict=True)]


def format_table(rows):
    header = f"{'backend':7} {'kernel':20} {'distribution':11} {'shapes':25} {'SASS/entry':>10} {'bound':>6} {'ratio':>5} {'calls/entry':>11} {'min':>7} {'bar':>3} {'lds/sts':>7}  ok"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r.backend:7} {r.kernel:20} {r.distribution:11} {','.join(r.shapes):25} {r.sass_per_entry:10.2f} "
            f"{r.bound_sass_per_entry:6.2f} {r.sass_per_entry / r.bound_sass_per_entry:5.2f} "
            f"{r.philox_calls_per_entry:11.4f} {r.minimum_philox_calls_per_entry:7.4f} {r.barriers_per_iteration:3} "
            f"{r.shared_accesses_per_iteration:7}  {'yes' if r.within_budget else 'known' if r.known_over_budget else 'NO'}"
        )
    return lines


def as_json(rows):
    return [asdict(r) for r in rows]
