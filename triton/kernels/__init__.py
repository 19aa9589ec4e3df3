"""The Triton kernels of nola_kernels, installed as nola_kernels.triton_kernels (see triton/README.md)."""
