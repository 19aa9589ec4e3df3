"""Compiling for Hopper (sm_90) without a GPU: Triton kernels through Triton's compiler (down to
PTX and the ptxas in its wheel), CUDA sources through nvcc; and the SASS of the results, read with
the nvdisasm in Triton's wheel."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HOPPER = GPUTarget("cuda", 90, 32)
HOPPER_SHARED_BYTES = 232448  # shared memory one block may use on an H100/H200 (227 KiB)
# Pointers in the activations' dtype; every other pointer is float32.
ACTIVATION_POINTERS = {"x_ptr", "delta_ptr", "grad_ptr", "grad_x_ptr"}
FLOAT_SCALARS = {"scale", "scaling"}
ACTIVATIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# csrc/'s flags (setup.py, CMakeLists.txt), for sm_90a only.
NVCC_FLAGS = ("-std=c++17", "-O3", "-cubin", "-arch=sm_90a")
CSRC = Path(__file__).resolve().parents[2] / "csrc"


def _signature(fn, activation, constexprs):
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = f"*{activation if name in ACTIVATION_POINTERS else 'fp32'}"
        else:
            types[name] = "fp32" if name in FLOAT_SCALARS else "i64" if name == "seed" else "i32"
    return types


def compile_triton(kernel, activation, constexprs, num_warps=4, num_stages=3):
    """The kernel compiled for sm_90: `activation` types the activation pointers (fp32, bf16,
    fp16); integers are i32 but the 64-bit seed. Fails past Hopper's shared memory."""
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    source = ASTSource(
        fn=fn,
        signature=_signature(fn, activation, constexprs),
        constexprs={(fn.arg_names.index(name),): value for name, value in constexprs.items()},
    )
    compiled = triton.compile(source, target=HOPPER, options={"num_warps": num_warps, "num_stages": num_stages})
    shared = compiled.metadata.shared
    assert shared <= HOPPER_SHARED_BYTES, f"{fn.__name__} needs {shared} bytes of shared memory"
    return compiled


def _tool(name):
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if bundled.exists():
        return str(bundled)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name}: neither in Triton's wheel nor on PATH")
    return found


def disassemble(cubin):
    """The SASS of a cubin (bytes), as `nvdisasm -c` prints it."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([_tool("nvdisasm"), "-c", file.name], capture_output=True, text=True, check=True).stdout


def compile_cuda(source):
    """The cubin (bytes) of one .cu file, compiled with csrc/'s flags for sm_90a."""
    with tempfile.TemporaryDirectory() as scratch:
        cubin = Path(scratch) / "kernel.cubin"
        subprocess.run(
            ["nvcc", *NVCC_FLAGS, f"-I{CSRC}", str(source), "-o", str(cubin)], capture_output=True, text=True, check=True
        )
        return cubin.read_bytes()


def demangle(names):
    """C++ names as c++filt prints them (the names themselves where it is missing)."""
    result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    lines = result.stdout.splitlines()
    return lines if result.returncode == 0 and len(lines) == len(names) else list(names)
