# jitgate: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jitgate demo

lint: $(STAMP)
	$(BIN)/ruff check broker proxy slackapp workers tests bench

typecheck: $(STAMP)
	$(BIN)/mypy proxy broker/policy broker/masking broker/audit broker/credentials broker/identity broker/store broker/api broker/config.py

# pytest exits 5 when it collects nothing; that is a failure here, as any non-zero status is.
test: $(STAMP) lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	@command -v pgbouncer >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -qq pgbouncer >/dev/null) || echo "pgbouncer not installed: it will be left out"
	$(BIN)/python bench/run_bench.py
	$(BIN)/python bench/session_setup.py
	$(BIN)/python bench/audit_export.py

clean:
	rm -rf $(VENV) .jitgate .pytest_cache .mypy_cache .ruff_cache
