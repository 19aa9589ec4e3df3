"""`python -m sass` from bench/ (`make perf-static`): prints the SASS budget table, writes
bench/results/sass-sm90.json, and exits non-zero when a loop is over budget."""

import argparse
import json
import sys
from pathlib import Path

from .budget import PHILOX_RATIO, SASS_RATIO, as_json, format_table, measure

RESULTS = Path(__file__).resolve().parents[1] / "results" / "sass-sm90.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("triton", "cuda"), help="only this backend's loops (no JSON written)")
    backend = parser.parse_args().backend
    rows = measure((backend,) if backend else ("triton", "cuda"))
    print("\n".join(format_table(rows)))
    if backend is None:
        RESULTS.write_text(json.dumps(as_json(rows), indent=1) + "\n")
    for r in rows:
        if r.known_over_budget:
            print(f"known over budget: {r.backend} {r.kernel} ({r.distribution}): {r.known_over_budget}")
    failing = [r for r in rows if r.fails]
    for r in failing:
        verdict = "now within budget: remove it from KNOWN_OVER_BUDGET" if r.within_budget else "over budget"
        print(f"{verdict}: {r.backend} {r.kernel} ({r.distribution})", file=sys.stderr)
    print(f"budget: SASS/entry <= {SASS_RATIO} x reference, Philox calls/entry <= {PHILOX_RATIO} x minimum")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
