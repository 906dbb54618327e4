# Entry points that developers and CI run unchanged: `make test` (what .ci/run runs),
# `make demo`, `make lint`, `make bench`. Each first brings .venv up to date.
# `make test-unit` (no server needed) and `make test-integration` run one test tier each.
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

.PHONY: venv esphome-venv test test-unit test-integration demo lint bench
# The tiers of `make test` run one after another (lint, unit, integration), also under -j.
.NOTPARALLEL:

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

# ESPHome, to validate the reference device (deploy/devices/esphome/cuff.yaml) with
# `esphome config`: a venv of its own, from its own fully pinned list, because ESPHome is
# heavy (~250 MB, about a minute to install) and no dependency of cuffwatch. The
# integration tier needs it (tests/integration/test_esphome_config.py).
ESPHOME_VENV := .venv-esphome
ESPHOME_REQUIREMENTS := deploy/devices/esphome/requirements.txt
ESPHOME_STAMP := $(ESPHOME_VENV)/.installed-requirements.txt

esphome-venv: $(ESPHOME_STAMP)

$(ESPHOME_STAMP): $(ESPHOME_REQUIREMENTS)
	$(PYTHON) -m venv $(ESPHOME_VENV)
	$(ESPHOME_VENV)/bin/python -m pip install -q -r $(ESPHOME_REQUIREMENTS)
	$(ESPHOME_VENV)/bin/python -m pip check
	cp $(ESPHOME_REQUIREMENTS) $@

# pytest's exit code 5 (no tests collected) fails a target like any other non-zero code.
# $(1) is the tier's directory; PYTEST_ARGS go to each tier's run.
define run_tier
	status=0; $(BIN)/pytest $(1) $(PYTEST_ARGS) || status=$$?; \
	if ((status == 5)); then echo "make $@: pytest collected no tests in $(1)" >&2; fi; \
	exit $$status
endef

# Lint runs first: ruff and mypy strict are part of what CI holds the tree to. Then the unit
# tier (fast, no server), then the integration tier (real servers, `cuffwatch` processes).
test: lint test-unit test-integration

# Pure logic, in-process: no server, nothing listening, so no scripts/ensure-services.
test-unit: venv
	$(call run_tier,tests/unit)

# Real Mosquitto, InfluxDB 1.x and VictoriaMetrics (started by the fixtures), receivers and
# `cuffwatch` child processes. Under CI=true a server that cannot start fails, never skips.
test-integration: venv esphome-venv
	scripts/ensure-services
	$(call run_tier,tests/integration)

demo: venv
	$(BIN)/cuffwatch demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy core alerts ingest gateway dashboards sim ops tests bench

bench: venv
	scripts/ensure-services
	$(BIN)/python -m bench
