# The two set-up commands of the README: `make demo` and `make test`. Both create and reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQUIREMENTS := $(VENV)/.requirements
STAMP := $(VENV)/.installed

.PHONY: demo test bench perf-static cuda-check clean

$(REQUIREMENTS): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The editable install also builds the CPU library into nola_kernels/ (setup.py), again whenever
# its sources change.
# Each build stamp takes the time its build started: a source edited during the build is newer
# than the stamp, so the next run builds again.
$(STAMP): $(REQUIREMENTS) setup.py $(wildcard csrc/cpu/*) csrc/philox.cuh
	touch $@.started
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	mv $@.started $@

demo: $(STAMP)
	$(PY) examples/demo.py

# Lint, the tests, and every benchmark case once untimed, so the suite cannot rot. The Triton
# backend joins the CPU test matrix through Triton's interpreter.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	TRITON_INTERPRET=1 $(PY) -m pytest tests bench --benchmark-disable

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-only

# The SASS budget without a GPU (CI runs it after `make test`): every hot generation loop compiled
# for sm_90 (Triton's compiler, nvcc), counted per generated entry against a minimal reference
# loop; prints the table, writes bench/results/sass-sm90.json, fails on a loop over budget.
perf-static: $(STAMP)
	cd bench && TRITON_DEFAULT_FP_FUSION=1 ../$(PY) -m sass

# The CUDA extension without a GPU (CI runs it after `make test`): a second venv with a CUDA build
# of torch installs the package with the extension (setup.py), imports it and checks its ops
# under torch.ops, runs the host Philox test and the nvcc spill check, then builds the same
# extension with CMake and imports that. Reruns rebuild only what changed (2-core machine: about
# 4 minutes fresh, half of it installing torch; 30 s with nothing changed).
CUDA_VENV := .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_HOME ?= /usr/local/cuda
# torch's CUDA headers include cusparse.h and its CMake config wants libnvrtc; this machine's
# toolkit has neither, the pip nvidia packages beside torch have both.
CUDA_NVIDIA = $$($(CUDA_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13
CUDA_BUILD_ENV = CUDA_HOME=$(CUDA_HOME) CUDACXX=$(CUDA_HOME)/bin/nvcc CPATH=$(CUDA_NVIDIA)/include MAX_JOBS=2
CMAKE_BUILD := build/cmake

$(CUDA_VENV)/.installed: requirements-cuda.txt
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install --quiet -r requirements-cuda.txt
	touch $@

# The install copies the package: every Python file of it is a dependency.
$(CUDA_VENV)/.built: $(CUDA_VENV)/.installed setup.py $(wildcard csrc/* csrc/cpu/*) $(shell find nola_kernels -name '*.py')
	touch $@.started
	$(CUDA_BUILD_ENV) NOLA_BUILD_CUDA=1 $(CUDA_PY) -m pip install --quiet --no-build-isolation --no-deps .
	mv $@.started $@

# Run from tests/ so that Python imports the installed package (with its extension), not ./nola_kernels.
cuda-check: $(CUDA_VENV)/.built
	cd tests && ../$(CUDA_PY) -c 'import torch, nola_kernels._cuda; print(torch.ops.nola_kernels_cuda.mix.default._schema)'
	cd tests && ../$(CUDA_PY) -m pytest -p no:cacheprovider -s -q test_cuda_host.py test_cuda_backend.py
	$(CUDA_BUILD_ENV) cmake -S . -B $(CMAKE_BUILD) -DPython3_EXECUTABLE=$(CURDIR)/$(CUDA_PY) \
	    -DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) -DCUDA_nvrtc_LIBRARY=$(CUDA_NVIDIA)/lib/libnvrtc.so.13 > /dev/null
	$(CUDA_BUILD_ENV) cmake --build $(CMAKE_BUILD) -j 2
	cd $(CMAKE_BUILD) && $(CURDIR)/$(CUDA_PY) -c 'import torch, _cuda; print("CMake build:", torch.ops.nola_kernels_cuda.project.default._schema)'

clean:
	rm -rf $(VENV) $(CUDA_VENV) build *.egg-info .pytest_cache .benchmarks
