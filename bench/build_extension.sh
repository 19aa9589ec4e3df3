#!/usr/bin/env bash
# Builds the CUDA extension in place (nola_kernels/_cuda*.so) on a GPU machine, with its python3
# and torch, then imports it. bench/device_check.sh calls it first. The build log goes to
# $OUT/build.log. setup.py needs setuptools; without it the CMake build is used instead.
# Run from the repository root:  bash bench/build_extension.sh
set -euo pipefail
OUT=${OUT:-bench/results/device-run}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
export NOLA_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}
# The toolkit: torch guesses it from nvcc's path, which can be a wrapper outside the toolkit.
if [ -z "${CUDA_HOME:-}" ]; then
    for toolkit in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda; do
        [ -f "$toolkit/include/cuda_runtime.h" ] && { export CUDA_HOME=$toolkit; break; }
    done
fi
# torch's CUDA headers include cusparse.h: take it from the pip nvidia packages when the toolkit lacks it.
nvidia=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13
[ -d "$nvidia/include" ] && export CPATH="$nvidia/include${CPATH:+:$CPATH}"

start=$SECONDS
if "$PYTHON" -c 'import setuptools' 2>/dev/null; then
    "$PYTHON" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
else
    nvrtc=$(ls "$nvidia"/lib/libnvrtc.so* 2>/dev/null | head -1)
    { cmake -S . -B build/cmake -DPython3_EXECUTABLE="$(command -v "$PYTHON")" ${nvrtc:+-DCUDA_nvrtc_LIBRARY=$nvrtc} \
        && cmake --build build/cmake -j "$MAX_JOBS" && cmake --install build/cmake --prefix .; } \
        > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
fi
echo "CUDA extension built in $((SECONDS - start)) s"
"$PYTHON" -c 'import torch, nola_kernels._cuda; print("ops:", torch.ops.nola_kernels_cuda.lowrank_forward.default._schema)'
