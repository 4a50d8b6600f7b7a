# `make run`: set up .venv and run the default scenario; `make test`: set up and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENARIO ?= scenarios/small_scale.toml
OUT ?= runs/small_scale

.PHONY: setup run test bench paper notebooks clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,dask,datasets]"
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/gflow run $(SCENARIO) --out $(OUT) --overwrite

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# `make paper`: every experiment of the paper (scenarios/paper/*.toml) → runs/paper/<name>/
# (sweep.nc, runs.csv, figures/); an interrupted `make paper` resumes where it stopped.
# On a local Dask cluster: make paper PAPER_FLAGS="--workers 2".
PAPER_FLAGS ?=
paper: setup
	for s in scenarios/paper/*.toml; do $(BIN)/gflow sweep $$s --out runs/paper/$$(basename $$s .toml) $(PAPER_FLAGS) || exit 1; done

# `make notebooks`: regenerate notebooks/NN_*.ipynb from their jupytext sources notebooks/NN_*.py.
notebooks: setup
	$(BIN)/python notebooks/sync.py

clean:
	rm -rf $(VENV) runs .pytest_cache
