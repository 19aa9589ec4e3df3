"""The compiled CPU backend: the kernels of csrc/cpu/ built as the shared library nola_kernels._cpu,
a plain C interface (csrc/cpu/nola_cpu.h, no torch headers) called through ctypes on CPU tensors.
ctypes releases the GIL for each call; the kernels use up to torch.get_num_threads() threads.

It has mix and project (and their grouped forms) only: nola_matmul takes the composed path (both factors mixed here, then
torch's two skinny matmuls), since on the CPU the generation is what costs.

The compiled kernels generate the NOLA-Philox distributions only: for the official CUDA layout
families these four ops run the PyTorch backend's code (backends/torch_backend.py), with its bits.
"""

import contextlib
import ctypes
import importlib.util
import warnings

import torch

from ..dtypes import accumulation_dtype
from ..official_rng import parse_official
from . import check_implemented, torch_backend
from .torch_backend import no_work

LIBRARY = "nola_kernels._cpu"
# NolaCpuDistribution of csrc/cpu/nola_cpu.h.
DISTRIBUTION_CODES = {"uniform": 0, "rademacher": 1, "uniform16_philox7": 2, "rademacher_philox7": 3}
# Which Philox code generates the entries (csrc/cpu/philox_batch.h); every one gives the same bits.
INSTRUCTION_SETS = {"best": 0, "generic": 1, "avx2": 2}
_STATUS = {
    1: "unknown distribution",
    2: "k or the positions out of range",
    3: "instruction set not supported by this processor",
    4: "out of memory",
}


class Problem(ctypes.Structure):
    """NolaCpuProblem of csrc/cpu/nola_cpu.h, field by field."""

    _fields_ = [
        ("seed", ctypes.c_uint64),
        ("stream", ctypes.c_uint64),
        ("k", ctypes.c_uint64),
        ("numel", ctypes.c_uint64),
        ("groups", ctypes.c_uint64),
        ("index_start", ctypes.c_uint64),
        ("position_start", ctypes.c_uint64),
        ("scale", ctypes.c_double),
        ("distribution", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("isa", ctypes.c_int32),
    ]


_SIGNATURES = {
    "nola_cpu_isa_supported": (ctypes.c_int, [ctypes.c_int32]),
    "nola_cpu_mix_f32": (ctypes.c_int, [ctypes.POINTER(Problem), ctypes.c_void_p, ctypes.c_void_p]),
    "nola_cpu_mix_f64": (ctypes.c_int, [ctypes.POINTER(Problem), ctypes.c_void_p, ctypes.c_void_p]),
    "nola_cpu_project_partials": (ctypes.c_uint64, [ctypes.POINTER(Problem)]),
    "nola_cpu_project_f32": (ctypes.c_int, [ctypes.POINTER(Problem), *[ctypes.c_void_p] * 3]),
    "nola_cpu_project_f64": (ctypes.c_int, [ctypes.POINTER(Problem), *[ctypes.c_void_p] * 3]),
    "nola_cpu_basis": (ctypes.c_int, [ctypes.POINTER(Problem), ctypes.c_void_p]),
}


def _load(module_name=LIBRARY):
    """(the library, None), or (None, why not). A library that was built but fails to load warns
    once; one that was never built (NOLA_BUILD_CPU=0, or no C++ compiler) does not."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return None, (
            "the CPU library is not built (pip install builds it where a C++ compiler is present; "
            "NOLA_BUILD_CPU=1 forces the build, see README)"
        )
    try:
        library = ctypes.CDLL(spec.origin)
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(library, name)
            function.restype, function.argtypes = restype, argtypes
    except (OSError, AttributeError) as error:
        reason = f"the CPU library failed to load ({type(error).__name__}: {error})"
        warnings.warn(f"nola_kernels: {reason}; using the other backends", RuntimeWarning, stacklevel=2)
        return None, reason
    return library, None


_library, _load_error = _load()
# By the PyTorch backend's code (module docstring).
OFFICIAL_OPS = ("mix", "project", "mix_grouped", "project_grouped")
_instruction_set = INSTRUCTION_SETS["best"]


def unavailable_reason(device):
    """None on CPU devices once the library is loaded; otherwise why not."""
    if _library is None:
        return _load_error
    if torch.device(device).type != "cpu":
        return "the CPU kernels run on CPU tensors only"
    return None


def supported_instruction_sets():
    """The names in INSTRUCTION_SETS that this processor runs ("best" included)."""
    return [name for name, code in INSTRUCTION_SETS.items() if _library.nola_cpu_isa_supported(code)]


@contextlib.contextmanager
def instruction_set(name):
    """Generate with one instruction set's code inside the block (tests and benchmarks)."""
    global _instruction_set
    if name not in supported_instruction_sets():
        raise ValueError(f"instruction set must be one of {supported_instruction_sets()}, got {name!r}")
    previous, _instruction_set = _instruction_set, INSTRUCTION_SETS[name]
    try:
        yield
    finally:
        _instruction_set = previous


def _problem(seed, stream, k, numel, distribution, scale=1.0, index_start=0, position_start=0, groups=1):
    return Problem(
        seed=seed,
        stream=stream,
        k=k,
        numel=numel,
        groups=groups,
        index_start=index_start,
        position_start=position_start,
        scale=scale,
        distribution=DISTRIBUTION_CODES[distribution],
        threads=torch.get_num_threads(),
        isa=_instruction_set,
    )


def _run(function, problem, *tensors):
    status = function(ctypes.byref(problem), *(tensor.data_ptr() for tensor in tensors))
    if status != 0:
        why = _STATUS.get(status, f"status {status}")
        raise RuntimeError(f"nola_kernels CPU kernel {function.__name__} failed: {why}")


def _kernel(prefix, dtype):
    return getattr(_library, f"{prefix}_{'f64' if dtype == torch.float64 else 'f32'}")


def mix(coeffs, seed, stream, rows, cols, scale, distribution):
    """scale * sum_i coeffs[i] * U_i as a (rows, cols) tensor in float32 (float64 for float64 coeffs)."""
    return mix_grouped(coeffs.unsqueeze(0), seed, stream, rows, cols, scale, distribution)[0]


def mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution):
    """Row g is mix(coeffs[g]) bit for bit: (G, rows, cols) from (G, k) coeffs in one kernel call,
    which generates each basis entry once for all G rows."""
    if parse_official(distribution) is not None:
        return torch_backend.mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution)
    dtype = accumulation_dtype(coeffs)
    groups, k = coeffs.shape
    if no_work(groups, k, rows * cols):
        return torch.zeros(groups, rows, cols, dtype=dtype)
    coeffs = coeffs.to(dtype).contiguous()
    out = torch.empty(groups, rows, cols, dtype=dtype)
    problem = _problem(seed, stream, k, rows * cols, distribution, scale, groups=groups)
    _run(_kernel("nola_cpu_mix", dtype), problem, coeffs, out)
    return out


def project(grad, seed, stream, k, scale, distribution):
    """scale * <grad, U_i> for i < k: a (k,) tensor in float32 (float64 for float64 grad)."""
    return project_grouped(grad.unsqueeze(0), seed, stream, k, scale, distribution)[0]


def project_grouped(grads, seed, stream, k, scale, distribution):
    """Row g is project(grads[g]) bit for bit: (G, k) from (G, rows, cols) grads in one kernel
    call, which generates each basis entry once for all G rows."""
    if parse_official(distribution) is not None:
        return torch_backend.project_grouped(grads, seed, stream, k, scale, distribution)
    dtype = accumulation_dtype(grads)
    groups, numel = grads.shape[0], grads.shape[1:].numel()
    if no_work(groups, k, numel):
        return torch.zeros(groups, k, dtype=dtype)
    grads = grads.to(dtype).contiguous()
    problem = _problem(seed, stream, k, numel, distribution, scale, groups=groups)
    partials = torch.empty(_library.nola_cpu_project_partials(ctypes.byref(problem)), dtype=dtype)
    out = torch.empty(groups, k, dtype=dtype)
    _run(_kernel("nola_cpu_project", dtype), problem, grads, partials, out)
    return out


def basis_block(seed, stream, i_start, i_stop, n_start, n_stop, distribution):
    """Entries (i, n) for i in [i_start, i_stop), n in [n_start, n_stop) as the kernels generate
    them: float32 of shape (i_stop - i_start, n_stop - n_start), as nola_kernels.basis.basis_block."""
    check_implemented("cpu", "basis_block", distribution)
    count, numel = i_stop - i_start, n_stop - n_start
    problem = _problem(seed, stream, count, numel, distribution, index_start=i_start, position_start=n_start)
    out = torch.empty(count, numel, dtype=torch.float32)
    _run(_library.nola_cpu_basis, problem, out)
    return out
