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

# Two test processes (one per core here), a test file each at a time. As root, the tests run
# without the capability to read and write every file whatever its mode, so the permission tests
# test something; root keeps its others (the full-disk test mounts a real tmpfs).
AS_TESTER := $(shell [ "$$(id -u)" = 0 ] && command -v setpriv >/dev/null && \
	echo setpriv --bounding-set=-dac_override,-dac_read_search --inh-caps=-dac_override,-dac_read_search)

test: setup
	$(AS_TESTER) $(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) results

# The benchmark suite (issue #4, docs/performance.md): about 20 minutes on a 2-core CPU; rewrites
# docs/performance.md and docs/scaling.png. `make bench-quick` is a smoke run at tiny sizes.
bench: setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-quick: setup
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)
