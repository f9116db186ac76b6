# The two commands of the README: `make demo` and `make test`. Each creates .venv if needed and installs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'

demo: install
	$(BIN)/mmvae demo

test: install
	$(BIN)/pytest
