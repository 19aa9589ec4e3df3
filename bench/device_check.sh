#!/usr/bin/env bash
# One call on a GPU machine, at most 8 minutes: build the CUDA extension, the GPU tests, every
# nola_matmul path beside the performance model (bench/device_paths.py: fused and composed per
# backend, LoRA, official, both distributions, GPT-2 medium and LLaMA-2-7B q_proj), then the CUDA
# benchmarks, the grouped model's train step, then the serving benchmarks.
# Logs and results go under $OUT (bench/results/device-run when run by hand); the comparison
# table prints last. Needs only what the GPU image has: python3 with torch, triton, pytest,
# pytest-benchmark and hypothesis (PYTHON names another interpreter). Run from the repository
# root:  bash bench/device_check.sh
set -uo pipefail
OUT=${OUT:-bench/results/device-run}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# From a source tree nola_kernels.triton_kernels exists only where setup.py maps it (triton/kernels):
# link it there for the run, or the Triton backend cannot be imported.
[ -e nola_kernels/triton_kernels ] || ln -s ../triton/kernels nola_kernels/triton_kernels
PYTHON=${PYTHON:-python3}
# Each step gets a share of the 8 minutes (the build about 90 s); SIGINT lets pytest still print its summary.
TESTS_SECONDS=${TESTS_SECONDS:-120}
PATHS_SECONDS=${PATHS_SECONDS:-90}
BENCH_SECONDS=${BENCH_SECONDS:-90}
SERVING_SECONDS=${SERVING_SECONDS:-45}
GROUPED_SECONDS=${GROUPED_SECONDS:-45}

bash bench/build_extension.sh 2>&1 | tee "$OUT/build-summary.txt"  # failing, the cuda backend is skipped

"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/device.txt"
import datetime, subprocess, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"{name} | torch {torch.__version__} | {datetime.date.today()} | commit {commit or 'unknown'}")
PY

# The tests check numbers, not speed.
timeout -s INT "$TESTS_SECONDS" \
    "$PYTHON" -m pytest tests -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
tests_status=${PIPESTATUS[0]}

# Measured against modelled microseconds per path, and which path each backend should pick; the
# model's own table first, for the same figures.
"$PYTHON" bench/perf_model.py 2>&1 | tee "$OUT/perf-model.txt"
timeout -s INT "$PATHS_SECONDS" "$PYTHON" bench/device_paths.py --out "$OUT" 2>&1 | tee "$OUT/paths.log"
paths_status=${PIPESTATUS[0]}

timeout -s INT "$BENCH_SECONDS" \
    "$PYTHON" -m pytest bench --benchmark-only -k "cuda and not train_step" -q -p no:cacheprovider 2>&1 | tee "$OUT/bench.log"
bench_status=${PIPESTATUS[0]}
# A 12-layer GPT-2-small-shaped train step: grouped NOLA, per-layer NOLA, LoRA, the frozen model.
timeout -s INT "$GROUPED_SECONDS" "$PYTHON" -m pytest bench/test_bench_grouped.py --benchmark-only -k cuda -q \
    -p no:cacheprovider --benchmark-json "$OUT/grouped-cuda.json" 2>&1 | tee "$OUT/bench-grouped.log"
grouped_status=${PIPESTATUS[0]}
cp bench/results/latest-cuda.json "$OUT/" 2>/dev/null && "$PYTHON" bench/report.py "$OUT/latest-cuda.json"

# Serving: the factor cache against a LoRA layer, and rows of many adapters (the segmented kernel).
timeout -s INT "$SERVING_SECONDS" \
    "$PYTHON" -m pytest bench/test_bench_serving.py --benchmark-only -k cuda -q -p no:cacheprovider 2>&1 | tee "$OUT/serving.log"
serving_status=${PIPESTATUS[0]}

echo "tests exit $tests_status, paths exit $paths_status, benchmarks exit $bench_status, serving exit $serving_status"
exit $((tests_status || paths_status || bench_status || serving_status))
