import os
import zlib

# Before nola_kernels is imported: kernel outputs start as NaN, so an element no program wrote shows.
os.environ.setdefault("NOLA_DEBUG_POISON", "1")

import pytest
import torch

import nola_kernels
from nola_kernels import available_backends


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=available_backends(torch.device("cpu")))
def backend(request):
    """Every backend that runs on this machine's CPU; each test runs against all of them."""
    return request.param


@pytest.fixture(params=available_backends(torch.device("cuda")) if torch.cuda.is_available() else ["torch"])
def gpu_backend(request):
    """Every backend that runs on CUDA tensors here (GPU tests skip without a GPU)."""
    return request.param


@pytest.fixture(autouse=True)
def _seed_torch(request):
    """Random inputs, the same on every run of a test: a gradient that is a single dot product
    (k = 1) can cancel to near zero by chance, and its relative error then says nothing."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def set_budget():
    """Set the PyTorch path's chunk budget for one test; the setting is restored after it."""
    previous = nola_kernels.set_chunk_budget(None)
    yield nola_kernels.set_chunk_budget
    nola_kernels.set_chunk_budget(previous)
