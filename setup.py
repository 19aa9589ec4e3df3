"""Build and install nola_kernels: the pure-Python package, the CPU library (nola_kernels._cpu,
from csrc/cpu/, a plain C interface without torch headers) wherever a C++ compiler is present,
and the CUDA extension (nola_kernels._cuda, from csrc/) where a CUDA build of torch and a CUDA
toolkit are present.

NOLA_BUILD_CPU and NOLA_BUILD_CUDA: 1 forces that library (the build fails if it cannot be
built), 0 skips it; unset, it is built when it can be (a failed CPU build is a warning, and the
package runs on the PyTorch path). TORCH_CUDA_ARCH_LIST picks the GPU architectures (default
here: "8.0+PTX;9.0a", i.e. sm_80 and sm_90a code, plus compute_80 PTX that the driver compiles
for any later GPU; sm_90a PTX would run on sm_90 only).
"""

import os

from setuptools import Extension, setup

CPU_SOURCES = ["csrc/cpu/generate.cpp"]
# No -march: the library runs on any x86-64 and picks its AVX2 code at run time. Multiplies and
# adds stay unfused, so that every build and code path rounds alike.
CPU_COMPILE_ARGS = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off"]

CUDA_SOURCES = [
    "csrc/binding.cpp",
    "csrc/generate.cu",
    "csrc/official.cu",
    "csrc/grouped.cu",
    "csrc/gemm.cu",
    "csrc/lowrank.cu",
    "csrc/philox_rate.cu",
]
DEFAULT_CUDA_ARCHS = "8.0+PTX;9.0a"


def build_switch(name):
    """The environment's "0", "1" or "" (unset) for one library."""
    switch = os.environ.get(name, "")
    if switch not in ("", "0", "1"):
        raise ValueError(f"{name} must be 0, 1 or unset, got {switch!r}")
    return switch


def cpu_extensions():
    """The CPU library as a list of one Extension (optional unless forced), or [] when skipped."""
    switch = build_switch("NOLA_BUILD_CPU")
    if switch == "0":
        return []
    library = Extension(
        "nola_kernels._cpu",
        sources=CPU_SOURCES,
        depends=["csrc/cpu/nola_cpu.h", "csrc/cpu/philox_batch.h", "csrc/philox.cuh"],
        extra_compile_args=CPU_COMPILE_ARGS,
        extra_link_args=["-fopenmp"],
        language="c++",
        optional=switch == "",
    )
    return [library]


def cuda_extension_options():
    """setup() keywords that build the CUDA extension, or {} when it is not to be built."""
    switch = build_switch("NOLA_BUILD_CUDA")
    if switch == "0":
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        if switch == "1":
            raise
        return {}
    if switch == "" and (torch.version.cuda is None or CUDA_HOME is None):
        return {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    extension = CUDAExtension(
        "nola_kernels._cuda",
        sources=CUDA_SOURCES,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


def extension_options():
    """setup() keywords for the CPU library and the CUDA extension (torch's BuildExtension builds
    both when the CUDA one is built)."""
    options = cuda_extension_options()
    options["ext_modules"] = cpu_extensions() + options.get("ext_modules", [])
    return options


setup(
    name="nola_kernels",
    version="0.1.0",
    description="Fused NOLA kernels: LoRA factors as coefficients of on-the-fly Philox random bases",
    packages=[
        "nola_kernels", "nola_kernels.adapters", "nola_kernels.backends", "nola_kernels.compat",
        "nola_kernels.triton_kernels",
    ],
    # The Triton kernels live in triton/kernels/ (triton/ itself has no __init__.py, so that
    # `import triton` from the repository root still finds the real Triton).
    package_dir={"nola_kernels.triton_kernels": "triton/kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "safetensors>=0.4"],
    # Optional: the library itself writes PEFT files without peft; these run the demo, the GPT-2
    # example and the PeftModel checks.
    extras_require={"demo": ["scikit-learn", "matplotlib"], "hf": ["transformers", "peft"]},
    **extension_options(),
)
