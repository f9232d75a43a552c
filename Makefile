# relayq: the two commands are `make demo` and `make test`; everything else is a step of theirs.
# On a fresh machine with Python and make, these targets install everything they need:
# uv (into .tools/), Python 3.12 and every dependency (into .venv/, from uv.lock), and Debian's
# prometheus and prometheus-alertmanager packages (scripts/install-tools.sh: as root or with
# passwordless sudo; otherwise it stops with the one command to run).

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STACK := $(BIN)/relayq-stack
PYTEST_ARGS ?=

.PHONY: help setup lint typecheck proto proto-check rules test test-unit test-integration \
        up down status demo clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) uv.lock pyproject.toml */pyproject.toml libs/*/pyproject.toml
	$(UV) sync --frozen
	@touch $@

setup: $(VENV)/.synced  ## install uv, Python 3.12, all dependencies, Prometheus and Alertmanager
	@scripts/install-tools.sh

lint: setup  ## ruff (lint and format)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup  ## mypy --strict on our code
	$(BIN)/mypy libs/core/src libs/devstack/src ingest-svc/src worker-svc/src dlq-svc/src \
	    metrics-gateway/src scripts tests load/src

proto: setup  ## regenerate gRPC code from proto/ (commit the result)
	PYTHON=$(PY) scripts/gen_proto.sh

proto-check: setup  ## fail if the committed gRPC code differs from proto/
	PYTHON=$(PY) scripts/gen_proto.sh --check

PROMETHEUS_DIR ?= observability/prometheus

rules: setup rules-config  ## promtool: check the config and rules, run the alert unit tests; amtool: the example receivers
	promtool check rules $(PROMETHEUS_DIR)/rules/*.yml
	promtool test rules $(PROMETHEUS_DIR)/tests/*.yml
	for f in observability/alertmanager/examples/*.yml; do amtool check-config "$$f" || exit 1; done

# The config names its rule files by the path compose mounts them at: check a copy that names
# the repository's instead (tests/observability/test_make_rules.py).
.PHONY: rules-config
rules-config:
	@config=$$(mktemp) && trap 'rm -f "$$config"' EXIT && \
	sed 's#/etc/prometheus/rules#$(abspath $(PROMETHEUS_DIR))/rules#' \
	    $(PROMETHEUS_DIR)/prometheus.yml > "$$config" && \
	promtool check config "$$config"

test-unit: setup
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: lint typecheck proto-check  ## every check and every test (real Redis, Postgres, gRPC, Celery)
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: chaos
chaos: setup  ## the full chaos run (20k jobs, faults on a schedule); figures in .relayq/chaos-full.json
	RELAYQ_CHAOS_SIZE=full $(BIN)/pytest tests/chaos -m chaos -s -p no:cacheprovider $(PYTEST_ARGS)

up: setup  ## start the local stack (no Docker); endpoints go to .relayq/stack.env
	$(STACK) up

down: setup  ## stop everything `make up` started
	$(STACK) down

status: setup  ## what runs, and is it healthy
	$(STACK) status

demo: up  ## the stack, 1000 jobs, a summary; leaves the stack up
	$(PY) scripts/demo.py --jobs 1000

clean: down  ## stop the stack and remove its data and the virtualenvs
	rm -rf .relayq $(VENV) $(TOOLS)

# --- load and benchmark (load/) -----------------------------------------------------------------

.PHONY: load bench
LOAD_ARGS ?= -c 50 -z 30s --rps 200
LOAD_DATA := {"task": "demo.echo", "payload": {"n": {{.RequestNumber}}}, "idempotency_key": "load-{{newUUID}}"}

load: up  ## 12k jobs/min for 30 s through gRPC (LOAD_ARGS); ghz report in .relayq/load-report.json
	$(BIN)/relayq-load --insecure --call relayq.v1.IngestService.SubmitJob -d '$(LOAD_DATA)' \
	    $(LOAD_ARGS) -O json -o .relayq/load-report.json

BENCH_ARGS ?=
bench: setup  ## relayq vs bare Celery on its own stack (~25 min; BENCH_ARGS=--quick: ~4); docs/benchmarks.md
	$(PY) -m relayq_load.bench $(BENCH_ARGS)
