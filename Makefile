# `make run`: set up .venv and run the default scenario; `make test`: set up and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENARIO ?= scenarios/small_scale.toml
OUT ?= runs/small_scale

.PHONY: setup run test bench paper clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,dask]"
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/gflow run $(SCENARIO) --out $(OUT) --overwrite

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
