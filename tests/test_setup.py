"""setup.py's switch for the CUDA extension (NOLA_BUILD_CUDA), read without building anything."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("setuptools", reason="setup.py needs setuptools")


def _setup(switch):
    env = {**os.environ, "NOLA_BUILD_CUDA": switch}
    return subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_zero_skips_the_extension():
    result = _setup("0")
    assert result.returncode == 0 and result.stdout.strip().endswith("nola_kernels")


@pytest.mark.parametrize("switch", ["yes", "2"])
def test_other_values_are_refused(switch):
    result = _setup(switch)
    assert result.returncode != 0 and "NOLA_BUILD_CUDA must be 0, 1 or unset" in result.stderr
