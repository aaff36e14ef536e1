# Two commands for a fresh machine:  make run  (serve on http://$(HOST):$(PORT))  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
# A real FHIR server for the integration tests, in its own venv (it pins its own fhir.resources).
FHIR_VENV ?= .venv-fhir
SEKMET_VERSION ?= 0.1.1

# The OAuth server for the SMART tests (oauth2-mock-server, pinned by the lock file).
SMART_NODE := tests/smart/node_modules/.package-lock.json

.PHONY: run sandbox test test-unit lint typecheck bench bench-smoke docker-lint system-packages clean

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

$(SMART_NODE): tests/smart/package.json tests/smart/package-lock.json
	cd tests/smart && npm ci --no-audit --no-fund --loglevel=error

# Debian packages the tests use: PostgreSQL (store), Chromium (SMART app), wrk (benchmark),
# nginx (the load balancer of the topology).
system-packages:
	bash scripts/ci-postgres.sh
	bash scripts/ci-chromium.sh
	bash scripts/ci-wrk.sh
	bash scripts/ci-nginx.sh

run: $(VENV)/.installed-run
	CDS_DEV_MODE=$${CDS_DEV_MODE:-1} CDS_PUBLIC_BASE_URL=$${CDS_PUBLIC_BASE_URL:-http://$(HOST):$(PORT)} \
		$(BIN)/hfs-cds serve --host $(HOST) --port $(PORT)

# A FHIR server (sekmet-fhir, FHIR_PORT=8090) with the synthetic patients, the service on PORT fetching
# from it, a smoke run that must be green; both run on until Ctrl-C (SANDBOX_EXIT=1: stop after smoke).
sandbox: $(VENV)/.installed-run $(FHIR_VENV)/.installed
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python scripts/sandbox.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

test: $(VENV)/.installed-test $(FHIR_VENV)/.installed $(SMART_NODE) system-packages
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/hadolint docker/Dockerfile
	$(MAKE) --no-print-directory bench-smoke
	$(BIN)/python -m pytest

# The tests that need only `pip install -e '.[test]'`: no root, no network, no server process but
# the app's own. Left out: tests marked integration (sekmet FHIR server, Chromium, Node.js for the
# OAuth server and the card renderer, gunicorn) and the PostgreSQL half of the store tests (ids
# containing "postgresql", which also drops three database-URL parsing cases).
test-unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not integration" -k "not postgresql"

# The benchmark (issue 7): the image's gunicorn configuration on loopback, driven by wrk.
bench: $(VENV)/.installed-test $(FHIR_VENV)/.installed system-packages
	$(BIN)/python bench/run_bench.py

# A few seconds per scenario, so the benchmark cannot rot; results in test-artifacts/bench/.
# The S2lb/S2pg rows run the topology (nginx, PostgreSQL): hence system-packages.
bench-smoke: $(VENV)/.installed-test $(FHIR_VENV)/.installed system-packages
	$(BIN)/python bench/run_bench.py --quick --out test-artifacts/bench

# The production topology on this machine, without Docker: PostgreSQL, two replicas (the image's
# gunicorn command) and nginx in front (docker/nginx/). Ports: TOPOLOGY_PORT (8080),
# TOPOLOGY_REPLICA_PORTS (8081,8082), TOPOLOGY_POSTGRES_PORT (5433). Ctrl-C stops it all.
topology: $(VENV)/.installed-test system-packages
	$(BIN)/python scripts/topology.py

docker-lint: $(VENV)/.installed-test
	$(BIN)/hadolint docker/Dockerfile

clean:
	rm -rf $(VENV) $(FHIR_VENV) tests/smart/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
