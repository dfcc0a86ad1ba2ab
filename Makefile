# One target per habit. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: run test test-fast test-postgres lint format bench system-deps clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

system-deps:
	@bash scripts/system-deps.sh

## Run the app: Redis (embedded if none), daphne, a worker, the demo story.
run: $(STAMP) system-deps
	$(PY) scripts/run.py

## The whole test suite (unit, end-to-end with real processes, browser).
test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

## The suite against PostgreSQL (DATABASE_URL defaults to the local server).
test-postgres: $(STAMP) system-deps
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## Benchmarks (docs/benchmarks.md): the real stack on loopback (bench/run.py; 5 to 9 min),
## then the engines alone (bench/engines.py; about 1.5 min) and the text cut alone
## (bench/cut.py; seconds). Short run:
## make bench BENCH_ARGS=--quick ENGINES_ARGS=--skip-full-size
bench: $(STAMP) system-deps
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/engines.py $(ENGINES_ARGS) --json bench/results/engines-$$(date +%Y%m%d-%H%M%S).json
	$(PY) bench/cut.py --json bench/results/cut-$$(date +%Y%m%d-%H%M%S).json

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache
