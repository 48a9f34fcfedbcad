# Two commands on a fresh machine: `make run` (the default grid) and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: venv run dryrun test lint fmt audit report clean compare

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## the default grid, offline, with the local profile
	$(BIN)/snakemake --profile profiles/local

dryrun: $(STAMP)
	$(BIN)/snakemake --profile profiles/local -n

test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/snakefmt .
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

audit: $(STAMP)  ## is every result current (config, code, inputs, content)? exit 1 if not
	$(BIN)/python -m workflow_scripts.audit $(AUDIT_ARGS)

report: $(STAMP)  ## one offline HTML report of every chart and table (after `make run`)
	$(BIN)/snakemake --profile profiles/local --report results/report.html

clean:
	rm -rf results .snakemake

compare: $(STAMP)  ## what differs between two result folders: make compare A=results B=other/results
	$(BIN)/python -m workflow_scripts.compare $(A) $(B) $(COMPARE_ARGS)
