"""The repository layout and backend selection: the promises a newcomer relies on."""

import subprocess
import sys
from pathlib import Path

import torch

from nola_kernels import available_backends
from nola_kernels.backends import resolve_backend

ROOT = Path(__file__).resolve().parent.parent


def test_import_triton_from_repository_root_gets_the_real_triton():
    probe = "import triton, triton.language; print(triton.__file__); print(hasattr(triton, 'jit'))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    location, has_jit = result.stdout.split()
    assert has_jit == "True"
    assert not Path(location).resolve().is_relative_to(ROOT / "triton")


def test_auto_picks_an_available_backend_and_torch_is_always_there():
    cpu = torch.device("cpu")
    assert "torch" in available_backends(cpu)
    # Triton's interpreter (TRITON_INTERPRET=1) runs by name only: auto keeps the CPU fast, on
    # the compiled CPU kernels where they are built.
    assert resolve_backend("auto", cpu) == ("cpu" if "cpu" in available_backends(cpu) else "torch")
