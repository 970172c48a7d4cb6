# Reply Guard: `make run` serves the guard, `make test` runs the whole suite. Both set themselves up.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs only what serving the default guard needs (no torch, no dev tools);
# `make test` adds the dev and models extras. Either may come first.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# WHEEL_SMOKE=off skips scripts/wheel-smoke.sh (it needs PyPI and Python 3.11 + 3.12).
WHEEL_SMOKE ?= on

.PHONY: run test lint install migrate clean wheel-smoke browser-deps

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(TEST_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,models]'
	touch $@

# Infinity (a real rerank server for tests/test_remote.py) needs numpy<2 and transformers 4: its own venv.
INFINITY := .venv-infinity
$(INFINITY)/.installed: constraints-infinity.txt
	test -x $(INFINITY)/bin/python || $(PYTHON) -m venv $(INFINITY)
	$(INFINITY)/bin/python -m pip install --quiet -c constraints-infinity.txt 'infinity-emb[server,torch]' torch==2.13.0
	touch $@

# axe-core, which the browser tests run inside the admin pages (accessibility checks), from the npm
# registry into tests/browser/node_modules (pinned by tests/browser/package-lock.json).
AXE := tests/browser/node_modules/axe-core/axe.min.js
$(AXE): tests/browser/package.json tests/browser/package-lock.json
	command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }
	cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

browser-deps: $(AXE)

install: $(TEST_STAMP) $(INFINITY)/.installed $(AXE)

migrate: $(RUN_STAMP)
	$(BIN)/guard migrate

run: migrate
	$(BIN)/guard serve

lint: $(TEST_STAMP)
	$(BIN)/ruff check guard tests migrations benchmarks scripts
	$(BIN)/ruff format --check guard tests migrations benchmarks scripts
	$(BIN)/mypy

# The wheel, installed into fresh venvs outside the checkout on Python 3.11 and 3.12, serves a guard.
wheel-smoke: $(TEST_STAMP)
	scripts/wheel-smoke.sh $(BIN)/python

test: $(TEST_STAMP) $(INFINITY)/.installed $(AXE)
	scripts/ensure-services.sh
	@# The admin pages' browser test drives Debian's chromium (CI runs as root; no browser downloads).
	if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; fi
	@# tests/test_nginx.py puts Debian's nginx in front of a served guard (docs/deployment.md's example).
	if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; fi
	$(MAKE) --no-print-directory lint
	if [ "$(WHEEL_SMOKE)" != off ]; then $(MAKE) --no-print-directory wheel-smoke; fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache tests/browser/node_modules
