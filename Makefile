# Two commands on a fresh machine:  `make run` (the default study)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test setup clean

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
