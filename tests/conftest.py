import os
import zlib
from typing import NamedTuple

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


class DeviceBackend(NamedTuple):
    """One cell of the contract matrix: a backend and the device its inputs live on."""

    device: torch.device
    backend: str


DEVICES = [torch.device("cpu")] + ([torch.device("cuda", 0)] if torch.cuda.is_available() else [])


def _marks(device):
    return [pytest.mark.gpu] if device.type == "cuda" else []


@pytest.fixture(params=[pytest.param(device, id=device.type, marks=_marks(device)) for device in DEVICES])
def device(request):
    """Every device this machine has: the CPU always, CUDA where present."""
    return request.param


def _device_backends():
    return [
        pytest.param(DeviceBackend(device, name), id=f"{device.type}-{name}", marks=_marks(device))
        for device in DEVICES
        for name in available_backends(device)
    ]


@pytest.fixture(params=_device_backends())
def device_backend(request):
    """Every backend on every device this machine has (the CPU always, CUDA where present): the
    contract tests create their inputs on `device` and run unchanged in each cell."""
    return request.param


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
