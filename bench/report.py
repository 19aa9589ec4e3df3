"""The comparison tables printed after the benchmarks, and their JSON copy in bench/results/."""

import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
SHAPE_KEYS = ("shape", "in_features", "out_features", "rank", "k", "tokens", "dtype", "threads")

# What each nola row is compared on: the row's measure per kind of ratio. Its baselines are
# every row that is not nola, and for a fused row its backend's composed row, so one table says
# fused against composed. "best" is the fastest round's time: on a shared CPU the median carries
# the other jobs' load, the fastest round less of it.
RATIOS = {"time": "median_ms", "best": "best_ms", "peak": "peak_mib"}


def build_tables(cases):
    """One table per (device, shape, pass), in run order: a row per implementation, and nola's
    ratios to the baselines (None where a side did not run, e.g. under -k)."""
    groups = {}
    for case in cases:
        groups.setdefault((case["device"], case["shape"], case.get("threads"), case["pass"]), []).append(case)
    tables = []
    for (device, _, _, pass_name), group in groups.items():
        rows = [_row(case) for case in group]
        shape = {key: group[0].get(key) for key in SHAPE_KEYS}
        tables.append({"device": device, **shape, "pass": pass_name, "rows": rows, "ratios": _ratios(rows)})
    return tables


def _row(case):
    rate = case["entries_per_s"]
    return {
        "implementation": case["implementation"],
        "median_ms": case["median_s"] * 1e3,
        "best_ms": case["best_s"] * 1e3 if "best_s" in case else None,  # absent in older results
        "peak_mib": case["peak_bytes"] / 2**20,
        "m_entries_per_s": None if rate is None else rate / 1e6,
    }


def _ratios(rows):
    names = [row["implementation"] for row in rows]
    by_name = dict(zip(names, rows, strict=True))
    ratios = {kind: {} for kind in RATIOS}
    for subject in (name for name in names if name.startswith("nola")):
        composed = subject.removesuffix("-fused") + "-composed" if subject.endswith("-fused") else None
        baselines = [name for name in names if not name.startswith("nola") or name == composed]
        for kind, measure in RATIOS.items():
            for baseline in baselines:
                mine, other = by_name[subject].get(measure), by_name[baseline].get(measure)
                value = mine / other if mine is not None and other else None
                ratios[kind][f"{subject}/{baseline}"] = value
    return ratios


def format_tables(tables):
    """The tables as text lines."""
    lines = []
    for table in tables:
        lines += [
            "",
            f"{table['device']} | {table['shape']} (in {table['in_features']}, out {table['out_features']}, "
            f"rank {table['rank']}, k = l = {table['k']}, {table['tokens']} tokens, "
            f"{table.get('dtype', 'float32')}{_threads(table, ', {} threads')}) | {table['pass']}",
            f"  {'implementation':<22}{'median ms':>11}{'best ms':>11}{'peak MiB':>11}{'M entries/s':>13}",
        ]
        for row in table["rows"]:
            best = _optional(row.get("best_ms"), ".2f")
            lines.append(
                f"  {row['implementation']:<22}{row['median_ms']:>11.2f}{best:>11}{row['peak_mib']:>11.2f}"
                f"{_optional(row['m_entries_per_s'], '.1f'):>13}"
            )
        for kind, ratios in table["ratios"].items():
            cells = [f"{label} {_optional(value, '.3g')}x" for label, value in ratios.items()]
            for start in range(0, len(cells), 4):  # four ratios a line keeps the table readable
                lines.append(f"  {kind}: " + "   ".join(cells[start : start + 4]))
    return lines


SUMMARY = (
    ("time", "official"),
    ("best", "official"),
    ("time", "lora"),
    ("best", "lora"),
    ("peak", "official"),
    ("peak", "lora"),
)


def format_summary(tables):
    """The short table: per table and nola row, its time and peak over official's and lora's
    (the ratios the GPU targets are stated in)."""
    header = "".join(f"{kind + '/' + baseline:>15}" for kind, baseline in SUMMARY)
    lines = ["", f"{'shape':<18}{'pass':<18}{'implementation':<22}{header}"]
    for table in tables:
        for row in table["rows"]:
            subject = row["implementation"]
            if not subject.startswith("nola"):
                continue
            ratios = table["ratios"]
            cells = [ratios.get(kind, {}).get(f"{subject}/{baseline}") for kind, baseline in SUMMARY]
            values = "".join(f"{_optional(value, '.3g'):>15}" for value in cells)
            shape = table["shape"] + _threads(table, " {}t")
            lines.append(f"{shape:<18}{table['pass']:<18}{subject:<22}{values}")
    return lines


def _threads(table, spec):
    """The table's thread count formatted with spec, or "" where the cases left torch's default
    (and in results saved before the thread count was recorded)."""
    threads = table.get("threads")
    return "" if threads is None else spec.format(threads)


def _optional(value, spec):
    return "-" if value is None else format(value, spec)


def write_json(tables):
    """Write each device's tables, with where and when they were measured, to
    results/latest-<device>.json; returns the paths written."""
    RESULTS_DIR.mkdir(exist_ok=True)
    paths = []
    for device in dict.fromkeys(table["device"] for table in tables):
        payload = {
            "device": device,
            "device_name": device_name(device),
            "torch_version": torch.__version__,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "tables": [table for table in tables if table["device"] == device],
        }
        path = RESULTS_DIR / f"latest-{device}.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        paths.append(path)
    return paths


def device_name(device):
    """The GPU's name, or the CPU model from /proc/cpuinfo (Linux) or platform (elsewhere)."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_commit():
    """The checkout's short commit hash, or None without git or without a commit."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


if __name__ == "__main__":
    # python bench/report.py bench/results/latest-cpu.json: print a saved run's tables again.
    saved = json.loads(Path(sys.argv[1]).read_text())
    print(
        f"{saved['device_name']} | torch {saved['torch_version']} | {saved['date']} | commit {saved['git_commit']}"
    )
    print("\n".join(format_tables(saved["tables"]) + format_summary(saved["tables"])))
