"""Build and install nola_kernels. Today the package is pure Python; the CUDA extension (csrc/)
and the Triton kernels (triton/) join it in later releases."""

from setuptools import setup

setup(
    name="nola_kernels",
    version="0.1.0",
    description="Fused NOLA kernels: LoRA factors as coefficients of on-the-fly Philox random bases",
    packages=["nola_kernels", "nola_kernels.adapters", "nola_kernels.backends"],
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "safetensors>=0.4"],
    # Optional: the library itself writes PEFT files without peft; these run the demo, the GPT-2
    # example and the PeftModel checks.
    extras_require={"demo": ["scikit-learn", "matplotlib"], "hf": ["transformers", "peft"]},
)
