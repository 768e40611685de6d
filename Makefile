# The two commands a newcomer needs: `make dev` and `make test`.
# Both create the virtual environment from constraints.txt first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: dev test lint format protos check-protos buf-lint check bench bench-quick bench-ceiling faults-long clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/processflow dev

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

protos: $(STAMP)
	$(BIN)/python tools/gen_protos.py

check-protos: $(STAMP)
	$(BIN)/python tools/gen_protos.py --check

tools/node_modules/.bin/buf: tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund
	touch $@

buf-lint: tools/node_modules/.bin/buf
	cd protos && ../tools/node_modules/.bin/buf lint

check: lint check-protos buf-lint test

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Benchmarks against the PostgreSQL server on 127.0.0.1:5432 (databases are
# created and dropped by the run). Both write docs/BENCHMARKS.md and print the
# figures as JSON on the last line.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench --quick

# Where a unary write's CPU goes: echo, ProcessFlow with its store stubbed
# out, and ProcessFlow, one after another (see docs/profiles/README.md).
bench-ceiling: $(BENCH_STAMP)
	$(BIN)/python -m bench.ceiling

# The long fault run (tests/faults): ten minutes of client load while relays
# are SIGKILLed, a throwaway PostgreSQL restarts, the legacy database drops
# away and poison events park sessions; prints what it survived.
faults-long: $(STAMP)
	$(BIN)/python -m tests.faults --minutes 10

clean:
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
