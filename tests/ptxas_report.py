"""Compile csrc/*.cu with nvcc -Xptxas -v for sm_80 and sm_90a and read registers and spills per
kernel (run as a script, it prints the table)."""

import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"
ARCHS = ("sm_80", "sm_90a")
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


@dataclass
class Entry:
    source: str
    kernel: str
    arch: str
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


def _gencode(arch):
    return f"-gencode=arch=compute_{arch[3:]},code={arch}"


def _ptxas_log(source):
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            ["nvcc", "-std=c++17", "-O3", "-Xptxas", "-v", *map(_gencode, ARCHS), "-c", str(source),
             "-o", str(Path(scratch) / "kernel.o")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    return result.stderr


def _parse(source, log):
    entries = []
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            entries.append(Entry(source, match[1], match[2]))
        elif entries and (match := _SPILLS.search(line)):
            entries[-1].stack, entries[-1].spill_stores, entries[-1].spill_loads = map(int, match.groups())
        elif entries and (match := _REGISTERS.search(line)):
            entries[-1].registers = int(match[1])
    return entries


def compile_report():
    """Every kernel of every csrc/*.cu file, for each architecture."""
    sources = sorted(CSRC.glob("*.cu"))
    with ThreadPoolExecutor() as pool:
        logs = list(pool.map(_ptxas_log, sources))
    return [entry for source, log in zip(sources, logs, strict=True) for entry in _parse(source.name, log)]


def spilling(entries):
    return [e for e in entries if e.spill_stores or e.spill_loads or e.stack]


def _demangled(names):
    result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    lines = result.stdout.splitlines()
    return lines if result.returncode == 0 and len(lines) == len(names) else names


def format_report(entries):
    names = _demangled([e.kernel for e in entries])
    lines = [f"{'arch':7} {'regs':>4} {'stack':>5} {'spill st/ld':>11}  kernel"]
    for entry, name in zip(entries, names, strict=True):
        name = re.sub(r"\([^()]*\)$", "", name.replace("nola::(anonymous namespace)::", ""))
        for code, distribution in enumerate(("uniform", "rademacher")):
            name = name.replace(f"(nola::Distribution){code}", distribution)
        spills = f"{entry.spill_stores}/{entry.spill_loads}"
        lines.append(
            f"{entry.arch:7} {entry.registers:4} {entry.stack:5} {spills:>11}  {entry.source}: {name}"
        )
    return lines


if __name__ == "__main__":
    print("\n".join(format_report(compile_report())))
