# VisionaryAI: `make run` serves the app on http://127.0.0.1:7071; `make test` type-checks the app, then runs the suite.
# Both install what they need first (a .venv from the pinned requirements, Azurite from package-lock.json).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test run bench install clean

install: $(VENV)/.installed node_modules/.installed

# An older Python (Ubuntu 22.04's, macOS's) fails deep in pip on a pin; say so before making the .venv.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(v < (3, 11) and f"VisionaryAI needs Python 3.11, 3.12 or 3.13; $(PYTHON) is {v[0]}.{v[1]}. Name another: make $(or $(MAKECMDGOALS),install) PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The browser test drives Debian's Chromium (never a downloaded browser).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

test: install $(CHROMIUM)
	$(PY) -m mypy
	$(PY) -m pytest

clean:
	rm -rf $(VENV) node_modules .azurite .mypy_cache

run: install
	test -f local.settings.json || cp local.settings.example.json local.settings.json
	$(PY) -m visionary run $(ARGS)

bench: install
	$(PY) bench/run.py
