# jitgate: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install native demo test lint typecheck advisories bench fuzz clean chromium audit-deps lock conformance

NATIVE := $(VENV)/.native
# The compiled modules (proxy/native.py) are rebuilt when a proxy or masking source, or any
# module MODULES lists, changed: Python would otherwise go on loading the extension built
# from the old source.
NATIVE_MODULES := $(shell $(PYTHON) -c 'import ast; tree = ast.parse(open("proxy/native.py").read()); \
	print(*(m.replace(".", "/") + ".py" for node in tree.body if isinstance(node, ast.Assign) \
	and getattr(node.targets[0], "id", None) == "MODULES" for m in ast.literal_eval(node.value)))')
NATIVE_SOURCES := setup.py $(NATIVE_MODULES) $(wildcard proxy/*.py proxy/protocol/*.py proxy/protocol/*.c broker/masking/*.py broker/masking/*/*.py)

# setup.py compiles the proxy's per-message modules with mypyc (a C compiler is needed;
# JITGATE_PURE_PYTHON=1 builds without). The build tools go in first, at the locked versions,
# so the install builds with them instead of fetching its own.
$(STAMP): pyproject.toml requirements.lock setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock 'setuptools>=77' mypy
	$(BIN)/pip install --quiet --no-build-isolation -c requirements.lock -e '.[dev]'
	touch $(STAMP) $(NATIVE)

$(NATIVE): $(STAMP) $(NATIVE_SOURCES)
	$(BIN)/pip install --quiet --no-build-isolation --no-deps -e .
	touch $(NATIVE)

native: $(NATIVE)

install: $(STAMP) $(NATIVE) chromium

# The console's browser test drives Debian's chromium (Playwright never downloads a browser).
chromium:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && apt-get update -qq >/dev/null \
		&& apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the console browser test will skip"

demo: $(STAMP) $(NATIVE)
	$(BIN)/jitgate demo

lint: $(STAMP)
	$(BIN)/ruff check broker proxy slackapp workers tests bench tools setup.py

typecheck: $(STAMP)
	$(BIN)/mypy proxy broker/policy broker/masking broker/audit broker/credentials broker/identity broker/store broker/api broker/approvals broker/console broker/mcp broker/cli/mcp_cmd.py broker/config.py broker/config_reference.py slackapp workers tools

# Every pin in requirements.lock against the committed PyPA advisory snapshot (offline;
# tools/advisories.py says how to refresh it). `make audit-deps` is the live check.
advisories: $(STAMP)
	$(BIN)/python tools/advisories.py check

# pytest exits 5 when it collects nothing; that is a failure here, as any non-zero status is.
test: $(STAMP) $(NATIVE) chromium lint typecheck advisories
	$(BIN)/pytest -q

bench: $(STAMP) $(NATIVE)
	@command -v pgbouncer >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -qq pgbouncer >/dev/null) || echo "pgbouncer not installed: it will be left out"
	$(BIN)/python bench/run_bench.py
	$(BIN)/python bench/cpu_per_txn.py
	$(BIN)/python bench/stream_rows.py
	$(BIN)/python bench/session_setup.py
	$(BIN)/python bench/audit_export.py
	$(BIN)/python bench/recorder_cost.py
	$(BIN)/python bench/approval_roundtrip.py
	$(BIN)/python bench/load_sessions.py --sessions 1000 --seconds 20

# Minutes of fuzzing: the hypothesis targets with many examples (the differential conformance
# test included: thousands of message sequences, direct vs through the gateway), then atheris (coverage-guided)
# on the codec, the session machine and the policy for FUZZ_SECONDS each. `make test` runs the
# same hypothesis targets briefly.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -p no:cacheprovider tests/fuzz tests/e2e/test_conformance.py
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install --quiet atheris || echo "atheris does not install here: hypothesis only"
	@if $(BIN)/python -c 'import atheris' 2>/dev/null; then \
		mkdir -p .fuzz && cd .fuzz && for t in codec session policy; do \
			../$(BIN)/python ../tests/fuzz/atheris_main.py $$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
		done; fi

# Known vulnerabilities in the installed dependencies, asked live (PyPI's advisory data via pip-audit).
# --strict: a dependency that could not be checked fails the run instead of passing silently.
# Not part of `make test`: it needs pypi.org's JSON API, which not every machine reaches;
# `make test` runs the offline `advisories` check instead.
audit-deps: $(STAMP)
	@$(BIN)/python -c 'import pip_audit' 2>/dev/null || $(BIN)/pip install --quiet pip-audit
	$(BIN)/pip-audit --strict --no-deps --disable-pip -r requirements.lock

# Pin what a fresh install of pyproject's dependencies resolves to today (review the diff).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[dev]'
	{ sed -n '/^#/p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

clean:
	rm -rf $(VENV) .jitgate .pytest_cache .mypy_cache .ruff_cache
	rm -rf build jitgate_native__mypyc.*.so proxy/native_sources.json
	find proxy broker -name '*.so' -delete

# psycopg 3's own test suite (connection, cursor, prepared, COPY, pipeline, notify, ...) run at
# the upstream directly and through `jitgate demo --policy observe`; fails when the pass sets
# differ beyond the gateway's by-design exceptions (tools/conformance.py lists them). Needs a
# psycopg checkout (PSYCOPG_SRC); takes about half an hour; CI does not run it.
PSYCOPG_SRC ?= ../psycopg
conformance: $(STAMP)
	$(BIN)/python tools/conformance.py --psycopg-src $(PSYCOPG_SRC)
