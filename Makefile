# Entry points that developers and CI run unchanged: `make test` (what .ci/run runs),
# `make demo`, `make lint`, `make bench`. Each first brings .venv up to date.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Stamps in the venv record what was installed, so an unchanged lock costs nothing.
LOCK_STAMP := $(VENV)/.installed-requirements.lock
EDITABLE_STAMP := $(VENV)/.installed-editable
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv test demo lint bench

venv: $(EDITABLE_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The lock is complete (every transitive dependency, pinned and hashed), so pip installs it
# as it is, without resolving: resolving lets pip look at releases newer than a pin (for a
# dependency named with extras, e.g. amqtt's pwdlib[argon2]) and refuse them as unhashed.
# `pip check` then proves the set consistent.
$(LOCK_STAMP): requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip check
	touch $@

$(EDITABLE_STAMP): pyproject.toml $(LOCK_STAMP)
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

# pytest's exit code 5 (no tests collected) fails the target like any other non-zero code.
# Lint runs first: ruff and mypy strict are part of what CI holds the tree to.
test: venv lint
	scripts/ensure-services
	status=0; $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; \
	if ((status == 5)); then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$status

demo: venv
	$(BIN)/cuffwatch demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy core alerts ingest gateway dashboards sim ops tests bench

bench: venv
	scripts/ensure-services
	$(BIN)/python -m bench
