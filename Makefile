# Two commands on a fresh clone:  `make run` (the whole system)  and  `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install kafka-fetch portal-fetch chromium run test test-quick lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

kafka-fetch: install
	$(BIN)/velora kafka fetch

## portal-fetch: the portal's chart library (uPlot, pinned) from the npm registry into .cache/npm
portal-fetch: install
	$(BIN)/velora portal fetch

## chromium: Debian's chromium for the portal's browser test (Playwright drives it; no download)
chromium:
	@test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

## run: Kafka, the query node (:8080, portal at /portal), ingest (:8081) and a seeded demo tenant
run: kafka-fetch portal-fetch
	$(BIN)/velora run

## test: lint, then every test against a real broker that the run starts and stops
test: kafka-fetch portal-fetch chromium lint
	$(BIN)/pytest

## test-quick: the suite without the slow crash/outage tests
test-quick: kafka-fetch portal-fetch chromium
	$(BIN)/pytest -m "not slow"

## lint: ruff (checks and formatting), and the layer contract of docs/architecture.md (import-linter)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

## bench: benchmarks; prints a table and writes bench/results/*.json
bench: kafka-fetch portal-fetch
	$(BIN)/python -m bench

clean:
	rm -rf var .pytest_cache .ruff_cache
