# Two commands on a fresh machine:  `make run` (the default study)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test setup clean bench bench-quick

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	$(BIN)/transferscope run

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) results

# The benchmark suite (issue #4, docs/performance.md): about 20 minutes on a 2-core CPU; rewrites
# docs/performance.md and docs/scaling.png. `make bench-quick` is a smoke run at tiny sizes.
bench: setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-quick: setup
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)
