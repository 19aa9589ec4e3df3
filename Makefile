# The two set-up commands of the README: `make demo` and `make test`. Both create and reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

demo: $(STAMP)
	$(PY) examples/demo.py

# Lint, the tests, and every benchmark case once untimed, so the suite cannot rot. The Triton
# backend joins the CPU test matrix through Triton's interpreter.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	TRITON_INTERPRET=1 $(PY) -m pytest tests bench --benchmark-disable

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
