# The developer's and the pipeline's one entry point: every target installs what it needs first.
#   make demo   install, synthesize every environment, train and release a build offline, score the customers
#   make test   install and run the whole suite (pytest, then the checkov security scan)
#   make bench  medians of synthesis, CLI start-up, local training and release
#   make infra-diff ENV=dev / make infra-deploy ENV=dev   cdktn diff / deploy of stack churn-<ENV>
#   make infra-check-state ENV=dev   refuse an environment whose Terraform state would stay on this machine
#   make infra-destroy ENV=dev   cdktn destroy of a disposable environment's stack (docs/runbook.md)
#   make live-test ENV=dev LIVE_CONFIRM=yes   the opt-in suite against a real subscription (docs/runbook.md)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools

# Python packages come from PIP_INDEX_URL (the Pipfile's source). Unset, it is pip's own default
# index, read from pip itself so that no committed file names a registry host.
PIP_INDEX_URL ?= $(shell $(PYTHON) -c "from pip._internal.models.index import PyPI; print(PyPI.simple_url)")
export PIP_INDEX_URL
export PIPENV_VENV_IN_PROJECT := 1
export PIPENV_YES := 1
export PIPENV_NOSPIN := 1
export PIPENV_VERBOSITY := -1
PIPENV_VERSION := 2026.10.3
PIPENV := $(TOOLS)/pipenv/bin/pipenv

# The cdktn CLI needs Node >= 22.19. Where the system Node is older, Node 22 comes from the npm
# registry (the node-linux-<arch> package ships the binary) into .tools/node.
NODE_VERSION := 22.23.3
NODE_ARCH := $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x64)
SYSTEM_NODE_OK := $(shell node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.stdout.write(String(a>22||(a===22&&b>=19)))' 2>/dev/null)
ifeq ($(SYSTEM_NODE_OK),true)
NODE_STAMP :=
else
NODE_BIN := $(CURDIR)/$(TOOLS)/node/node_modules/node-linux-$(NODE_ARCH)/bin
NODE_STAMP := $(NODE_BIN)/node
export PATH := $(NODE_BIN):$(PATH)
endif
CDKTN := node_modules/.bin/cdktn

CHECKOV_VERSION := 3.3.30
CHECKOV := $(TOOLS)/checkov/bin/checkov

# Quiet, offline-friendly defaults for the tools (see ../shared/FIELD-NOTES.md).
export CHECKPOINT_DISABLE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export JSII_RUNTIME_PACKAGE_CACHE_ROOT := $(CURDIR)/$(TOOLS)/jsii-cache
export TF_CLI_CONFIG_FILE := $(CURDIR)/$(TOOLS)/terraformrc

# The stack `make infra-*` works on, and extra cdktn flags (the pipeline adds --auto-approve).
ENV ?= dev
CDKTN_ARGS ?=

.PHONY: help install demo test lint scan synth summary bench down clean infra-diff infra-deploy infra-check-state infra-destroy live-test

help:
	@sed -n 's/^#   //p' Makefile

install: $(VENV)/.synced node_modules/.installed $(CHECKOV) $(TOOLS)/terraformrc

$(PIPENV):
	$(PYTHON) -m venv $(TOOLS)/pipenv
	$(TOOLS)/pipenv/bin/pip install --quiet pipenv==$(PIPENV_VERSION)

$(VENV)/.synced: Pipfile.lock | $(PIPENV)
	$(PIPENV) sync --dev
	touch $@

$(NODE_BIN)/node:
	npm install --silent --prefix $(TOOLS)/node --no-save node-linux-$(NODE_ARCH)@$(NODE_VERSION)

node_modules/.installed: package-lock.json $(NODE_STAMP)
	npm ci --silent
	touch $@

# checkov has its own environment: beside cdktn, mlflow and azure-ai-ml, pip backtracks for
# minutes and settles on an old checkov.
$(CHECKOV):
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install --quiet checkov==$(CHECKOV_VERSION)

$(TOOLS)/terraformrc:
	mkdir -p $(TOOLS) && touch $@

synth: install
	$(CDKTN) synth --output cdktf.out

# The deploy module reads the outputs file; it holds no sensitive output.
infra-diff: install
	$(CDKTN) diff churn-$(ENV) $(CDKTN_ARGS)

infra-deploy: install
	mkdir -p outputs
	$(CDKTN) deploy churn-$(ENV) --outputs-file outputs/churn-$(ENV).json $(CDKTN_ARGS)

# A CI agent forgets local files, so both pipelines run this before infra-diff (after make install).
infra-check-state:
	@$(PY) -c "import sys; from config import load_environment; env = load_environment('$(ENV)'); env.state_backend or sys.exit(f'environment {env.name} has no [environments.{env.name}.state_backend] in config/environments.toml; a pipeline needs remote state (docs/runbook.md)')"

# CHURN_TEARDOWN lets this one stack's Databricks workspace be destroyed (it is prevent_destroy otherwise);
# main.py refuses it for a purge-protected environment.
infra-destroy: install
	CHURN_TEARDOWN=churn-$(ENV) $(CDKTN) destroy churn-$(ENV) $(CDKTN_ARGS)

# A throwaway copy of environment ENV, from deploy to destroy, on a real subscription. It prints its cost and
# time estimate first and runs only with LIVE_CONFIRM=yes; `make test` never runs it (pyproject.toml).
live-test: install
	LIVE_ENV=$(ENV) $(PY) -m pytest -m live -s -p no:cacheprovider tests/live

summary:
	$(PY) -m stacks.summary cdktf.out

# checkov reads a copy without terraform.required_version, which its JSON parser cannot read (stacks/scan_input.py).
scan: synth
	$(PY) -m stacks.scan_input cdktf.out cdktf.out/checkov
	$(CHECKOV) --config-file .checkov.yaml -d cdktf.out/checkov --framework terraform_json --skip-download --quiet --compact

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest --junitxml=test-results/pytest.xml
	$(MAKE) --no-print-directory scan

demo: synth summary
	$(PY) -m deploy train --env local --build demo-$$(date +%Y%m%d.%H%M%S) --source demo@local
	$(PY) -m deploy release --env local --to stage
	$(PY) -m deploy release --env local --to prod
	$(PY) -m deploy status --env local
	@echo "Scoring two customers against churnservice-prod (local):"
	@curl -sS -H 'Content-Type: application/json' --data @examples/score-request.json \
	  http://127.0.0.1:$$($(PY) -c "from config import load_environment as l; print(l('local').local.prod_port)")/invocations; echo
	@echo "Scoring the whole customer base with the prod model (batch, local Spark):"
	$(PY) -m deploy score --env local --slot prod
	@echo "Monitoring: a new market grows and customers age; 2,000 such customers go through churnservice-prod:"
	$(PY) -m deploy.monitoring.traffic --env local --slot prod --rows 2000 --drift 1
	$(PY) -m deploy monitor --env local --slot prod --window 1d || test $$? -eq 3  # 3: drift flagged, as expected
	@echo "The local scoring servers keep running; stop them with: make down"

down: install
	$(PY) -m deploy down --env local

bench: install
	$(PY) bench/run.py

clean:
	-$(PY) -m deploy down --env local
	rm -rf cdktf.out .state outputs test-results .pytest_cache
