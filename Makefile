# Reply Guard: `make run` serves the guard, `make test` runs the whole suite. Both set themselves up.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install migrate clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,models]'
	touch $(STAMP)

# Infinity (a real rerank server for tests/test_remote.py) needs numpy<2 and transformers 4: its own venv.
INFINITY := .venv-infinity
$(INFINITY)/.installed: constraints-infinity.txt
	test -x $(INFINITY)/bin/python || $(PYTHON) -m venv $(INFINITY)
	$(INFINITY)/bin/python -m pip install --quiet -c constraints-infinity.txt 'infinity-emb[server,torch]' torch==2.13.0
	touch $@

install: $(STAMP) $(INFINITY)/.installed

migrate: $(STAMP)
	$(BIN)/guard migrate

run: migrate
	$(BIN)/guard serve

lint: $(STAMP)
	$(BIN)/ruff check guard tests migrations benchmarks
	$(BIN)/ruff format --check guard tests migrations benchmarks
	$(BIN)/mypy

test: $(STAMP) $(INFINITY)/.installed
	scripts/ensure-services.sh
	@# The admin pages' browser test drives Debian's chromium (CI runs as root; no browser downloads).
	if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; fi
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
