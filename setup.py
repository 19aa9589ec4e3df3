"""Build and install nola_kernels: pure Python, with the Triton kernels (triton/kernels/, compiled
by Triton at run time); the CUDA extension (csrc/) joins it in a later release."""

from setuptools import setup

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
)
