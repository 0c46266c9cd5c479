# make up    — the whole system on its embedded default (SQLite + local broker)
# make test  — the whole suite (PostgreSQL on 127.0.0.1:5432 or TEST_DATABASE_URL; broker started by the tests)
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && echo $$p && break; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: up test unit integration e2e bench lint typecheck seed clean chromium

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The console's browser tests drive Debian's chromium through Playwright (never
# `playwright install`); installed here when missing (root, or sudo, with apt-get).
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update && $$SUDO apt-get install -y chromium; }

up: $(STAMP)
	$(VENV)/bin/referrals up

seed: $(STAMP)
	$(VENV)/bin/referrals seed

test: $(STAMP) chromium
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest -m "not integration and not e2e" shared/tests/unit services

e2e: $(STAMP) chromium
	$(PY) -m pytest -m e2e tests

bench: $(STAMP)
	$(PY) bench/run.py

readme: $(STAMP)
	$(PY) -m servicekit.readme

lint: $(STAMP)
	$(VENV)/bin/ruff check shared services tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict shared/servicekit/events.py shared/servicekit/canonical.py shared/servicekit/crypto.py shared/servicekit/auth.py shared/servicekit/geo.py

clean:
	rm -rf var test-artifacts
