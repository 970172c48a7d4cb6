# Reply Guard: `make run` serves the guard, `make test` runs the whole suite. Both set themselves up.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install migrate clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	$(BIN)/guard migrate

run: migrate
	$(BIN)/guard serve

lint: $(STAMP)
	$(BIN)/ruff check guard tests migrations
	$(BIN)/ruff format --check guard tests migrations
	$(BIN)/mypy

test: $(STAMP)
	scripts/ensure-services.sh
	@# The admin pages' browser test drives Debian's chromium (CI runs as root; no browser downloads).
	if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; fi
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
