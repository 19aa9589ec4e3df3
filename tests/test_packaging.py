"""The wheel: built from the repository and installed in a fresh virtual environment outside it,
it carries the Triton kernels and the compiled CPU library, and the backends find them."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nola_kernels import available_backends

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import nola_kernels, nola_kernels.triton_kernels.lowrank as kernels\n"
    "print(nola_kernels.__file__)\n"
    "print(kernels.__file__)\n"
    "print(' '.join(nola_kernels.available_backends('cpu')))\n"
)


def _run(*command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, check=True, **kwargs).stdout


@pytest.mark.skipif(sys.platform == "win32", reason="the venv layout below is POSIX")
def test_wheel_in_a_fresh_venv_finds_the_triton_kernels_and_the_cpu_library(tmp_path):
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(ROOT))  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("nola_kernels-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    site = Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    # torch and triton come from this environment: a path entry, so its editable install's
    # finder (a .pth hook) stays out and only the wheel provides nola_kernels.
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    package, kernels, backends = _run(str(python), "-c", PROBE, cwd=tmp_path, env=env).splitlines()
    assert Path(package).is_relative_to(site) and Path(kernels).is_relative_to(site)
    built_here = "cpu" in available_backends("cpu")  # the wheel builds the CPU library where this did
    assert backends.split() == ["cpu", "triton", "torch"] if built_here else ["triton", "torch"]
