"""examples/gpt2_finetune.py on a tiny random GPT-2: it trains, saves, reloads, exports, merges."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gpt2_finetune.py"


def test_gpt2_example_runs_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    command = [sys.executable, str(EXAMPLE), "--tiny", "--steps", "10", "--rank", "2", "--num-basis", "32"]
    command += ["--lr", "0.05", "--out", str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout
    losses = [float(v) for v in re.findall(r"loss ([0-9.]+)", out)]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert "reloaded adapter vs trained: max |difference| 0.00e+00" in out
    merged = float(re.search(r"merged model vs adapted model: max \|difference\| ([0-9.e+-]+)", out).group(1))
    assert merged < 1e-4
    assert (tmp_path / "nola_adapter.safetensors").stat().st_size < 2500
    assert {p.name for p in (tmp_path / "peft_lora").iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
    }
