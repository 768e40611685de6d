# The two commands a newcomer needs: `make dev` and `make test`.
# Both create the virtual environment from constraints.txt first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint format protos check-protos buf-lint check bench bench-quick clean

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

clean:
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
