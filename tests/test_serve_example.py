"""examples/serve_adapters.py stays true: it serves its adapters in one batch and each row matches
that row run alone."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "serve_adapters.py"


def test_the_serving_example_batches_its_adapters():
    pytest.importorskip("transformers")
    command = [sys.executable, str(EXAMPLE), "--new-tokens", "4"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout
    assert out.count("saved ") == 3
    assert "one batch, 3 adapters: matches each row run alone" in out
