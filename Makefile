# Two commands set everything up on a fresh machine (Python 3.11 with pip):
#   make demo    the robot on the embedded grid, with a live health table
#   make test    the full test suite (installs what the tests need first, headless chromium included)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test bench bench-10m install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/healthrobot demo $(ARGS)

test: $(STAMP)
	sh tests/ensure_browser.sh
	sh tests/ensure_postgres.sh
	$(BIN)/python -m pytest -q -n auto --dist loadfile $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/loop.py
	$(BIN)/python bench/loop.py --queues 10000 --steps 3
	$(BIN)/python bench/simulate.py
	$(BIN)/python bench/stress.py
	$(BIN)/python bench/tickets.py
	$(BIN)/python bench/history.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/ticket_corpus.py
	$(BIN)/python bench/dashboard.py
	sh tests/ensure_postgres.sh && $(BIN)/python bench/dashboard.py --db postgres
	$(BIN)/python bench/startup.py

# The dashboards at 10 million jobs on SQLite and PostgreSQL: 35-40 min each on a busy 2-core machine
# (most of it filling the database and building its rollup); 7 GB of disk for SQLite, 8 for PostgreSQL.
bench-10m: $(STAMP)
	$(BIN)/python bench/dashboard.py --jobs 10000000
	sh tests/ensure_postgres.sh && $(BIN)/python bench/dashboard.py --jobs 10000000 --db postgres
