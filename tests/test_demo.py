"""`make demo` stays true: the few-shot demo runs to the end, prints its table and saves its plot."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_demo_runs_prints_its_table_and_saves_the_plot(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    plot = tmp_path / "plot.png"
    command = [sys.executable, str(DEMO), "--seeds", "2", "--steps", "40", "--plot", str(plot)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout
    rows = {
        name.strip(): (int(params), int(size), float(accuracy))
        for name, params, size, accuracy in re.findall(
            r"^(linear probe|LoRA r=1|NOLA k=l=\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+) \+- [0-9.]+%", out, flags=re.M
        )
    }
    assert list(rows) == ["linear probe", "LoRA r=1", "NOLA k=l=16", "NOLA k=l=64"]
    probe, lora, nola16, nola64 = rows.values()
    assert probe[0] < nola16[0] < nola64[0] < lora[0]  # NOLA trains fewer parameters than LoRA r=1
    assert all(accuracy > 30 for _, _, accuracy in rows.values())  # chance is 20%
    assert plot.stat().st_size > 10_000 and plot.read_bytes().startswith(b"\x89PNG")
