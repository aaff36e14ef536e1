# Two commands for a fresh machine:  make run  (serve on http://$(HOST):$(PORT))  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
# A real FHIR server for the integration tests, in its own venv (it pins its own fhir.resources).
FHIR_VENV ?= .venv-fhir
SEKMET_VERSION ?= 0.1.1

.PHONY: run test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

$(FHIR_VENV)/.installed:
	$(PYTHON) -m venv $(FHIR_VENV)
	$(FHIR_VENV)/bin/python -m pip install --quiet sekmet-fhir==$(SEKMET_VERSION)
	touch $@

run: $(VENV)/.installed-run
	CDS_DEV_MODE=$${CDS_DEV_MODE:-1} CDS_PUBLIC_BASE_URL=$${CDS_PUBLIC_BASE_URL:-http://$(HOST):$(PORT)} \
		$(BIN)/hfs-cds serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

test: $(VENV)/.installed-test $(FHIR_VENV)/.installed
	bash scripts/ci-postgres.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(FHIR_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
