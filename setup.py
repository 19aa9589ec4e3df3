"""Build and install nola_kernels: the pure-Python package, plus the CUDA extension
(nola_kernels._cuda, from csrc/) where a CUDA build of torch and a CUDA toolkit are present.

NOLA_BUILD_CUDA=1 forces the extension (the build fails if it cannot be built), NOLA_BUILD_CUDA=0
skips it; unset, it is built when it can be. TORCH_CUDA_ARCH_LIST picks the GPU architectures
(default here: "8.0+PTX;9.0a", i.e. sm_80 and sm_90a code, plus compute_80 PTX that the driver
compiles for any later GPU; sm_90a PTX would run on sm_90 only).
"""

import os

from setuptools import setup

CUDA_SOURCES = [
    "csrc/binding.cpp",
    "csrc/generate.cu",
    "csrc/gemm.cu",
    "csrc/lowrank.cu",
    "csrc/philox_rate.cu",
]
DEFAULT_CUDA_ARCHS = "8.0+PTX;9.0a"


def cuda_extension_options():
    """setup() keywords that build the CUDA extension, or {} when it is not to be built."""
    switch = os.environ.get("NOLA_BUILD_CUDA", "")
    if switch not in ("", "0", "1"):
        raise ValueError(f"NOLA_BUILD_CUDA must be 0, 1 or unset, got {switch!r}")
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


setup(
    name="nola_kernels",
    version="0.1.0",
    description="Fused NOLA kernels: LoRA factors as coefficients of on-the-fly Philox random bases",
    packages=["nola_kernels", "nola_kernels.adapters", "nola_kernels.backends", "nola_kernels.triton_kernels"],
    # The Triton kernels live in triton/kernels/ (triton/ itself has no __init__.py, so that
    # `import triton` from the repository root still finds the real Triton).
    package_dir={"nola_kernels.triton_kernels": "triton/kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "safetensors>=0.4"],
    # Optional: the library itself writes PEFT files without peft; these run the demo, the GPT-2
    # example and the PeftModel checks.
    extras_require={"demo": ["scikit-learn", "matplotlib"], "hf": ["transformers", "peft"]},
    **cuda_extension_options(),
)
