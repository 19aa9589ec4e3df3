"""setup.py's switches for the CPU library and the CUDA extension (NOLA_BUILD_CPU, NOLA_BUILD_CUDA),
read without building anything."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("setuptools", reason="setup.py needs setuptools")


SWITCHES = ["NOLA_BUILD_CPU", "NOLA_BUILD_CUDA"]


def _setup(name, switch):
    env = {**os.environ, name: switch}
    return subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("name", SWITCHES)
def test_zero_skips_the_extension(name):
    result = _setup(name, "0")
    assert result.returncode == 0 and result.stdout.strip().endswith("nola_kernels")


@pytest.mark.parametrize("name", SWITCHES)
@pytest.mark.parametrize("switch", ["yes", "2"])
def test_other_values_are_refused(name, switch):
    result = _setup(name, switch)
    assert result.returncode != 0 and f"{name} must be 0, 1 or unset" in result.stderr
