"""`make demo` stays true: the demo runs to the end, its numbers agree and its training learns."""

import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_demo_runs_and_its_training_loss_falls():
    result = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, check=True, timeout=300)
    out = result.stdout
    for name in ("nola_matmul (basis never stored)", "naive: whole basis", "official: torch RNG"):
        assert name in out
    difference = float(re.search(r"relative difference ([0-9.e+-]+)", out).group(1))
    assert difference < 1e-5
    losses = [float(v) for v in re.findall(r"^\s+\d+\s+([0-9.]+)$", out, flags=re.M)]
    assert len(losses) == 7 and losses[-1] < 1e-3 * losses[0]
