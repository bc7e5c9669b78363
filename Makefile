# VisionaryAI: `make run` serves the app on http://127.0.0.1:7071; `make test` runs the suite.
# Both install what they need first (a .venv from the pinned requirements, Azurite from package-lock.json).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test run install clean

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) node_modules .azurite
