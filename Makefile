# Two commands on a fresh machine: `make run` (the default grid) and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: venv run dryrun test lint fmt audit rerun-stale report clean compare plan preflight cluster real-models real-decoders smoke-paper readme-numbers

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# The run's cost (wall time, jobs, job time per rule) goes to <results root>/logs/make_run.json
# when it ran a job; `make readme-numbers` quotes it (workflow_scripts/report/runtime.py).
run: $(STAMP)  ## the default grid, offline, with the local profile
	root="$$($(RESULTS_ROOT))" && start=$$(date +%s) && \
	  $(BIN)/snakemake --profile profiles/local && \
	  $(BIN)/python -m workflow_scripts.report.runtime "$$root" "$$start"

dryrun: $(STAMP)
	$(BIN)/snakemake --profile profiles/local -n

# Two workers (this machine's cores), one test file per worker at a time, so that a file's
# module-scoped fixtures (the tiny grids, the real-size smoke run) are built once.
TEST_WORKERS ?= 2
test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/snakefmt .
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# CONFIG=config/paper.yaml (default: config.yaml alone; CONFIG="config/paper.yaml
# config/speechllm-paper.yaml": both grids) names the run's grid for every target below.
CONFIGFILE := $(if $(CONFIG),--configfile $(CONFIG),)
# The results root (docs/configuration.md): `results_dir` in config/site.yaml, else results/;
# $LAYER_REDUNDANCY_RESULTS wins over the file. Printed absolute; a target fails if the config does.
RESULTS_ROOT = $(BIN)/python -m workflow_scripts.results_root $(CONFIGFILE)

audit: $(STAMP)  ## is every result current (config, code, inputs, content)? exit 1 if not: make audit [CONFIG=...]
	$(BIN)/python -m workflow_scripts.audit $(AUDIT_ARGS) $(CONFIGFILE)

rerun-stale: $(STAMP)  ## rerun exactly what `make audit` flags (snakemake --forcerun), then audit again
	$(BIN)/python -m workflow_scripts.audit --rerun $(AUDIT_ARGS) $(CONFIGFILE)

report: $(STAMP)  ## one offline HTML report of every chart and table (after `make run`): <results root>/report.html
	root="$$($(RESULTS_ROOT))" && \
	  $(BIN)/snakemake --profile profiles/local $(CONFIGFILE) --report "$$root/report.html"

readme-numbers: $(STAMP)  ## README's findings block (<!-- findings:start/end -->) from <results root>/tables/overview.csv
	root="$$($(RESULTS_ROOT))" && $(BIN)/python -m workflow_scripts.report.readme \
	  --overview "$$root/tables/overview.csv" --speechllm "$$root/tables/speechllm_summary.csv"

clean:  ## results/ and .snakemake/ of this folder (never a results_dir elsewhere)
	rm -rf results .snakemake

compare: $(STAMP)  ## what differs between two result folders: make compare B=other/results [A=...; default: the results root]
	a="$(A)"; test -n "$$a" || a="$$($(RESULTS_ROOT))" && \
	  $(BIN)/python -m workflow_scripts.compare "$$a" $(B) $(COMPARE_ARGS)

# Before a cluster run: what it will cost, and whether it can start (CONFIG as above);
# PLAN_ARGS/PREFLIGHT_ARGS: more options (--slurm: a test job).
plan: $(STAMP)  ## jobs, GPU jobs, GPU hours, disk and peak memory of a run: make plan CONFIG=config/paper.yaml
	$(BIN)/python -m workflow_scripts.resource_plan $(CONFIGFILE) $(PLAN_ARGS)

# The one form of a cluster run, from the repository root on a login node (docs/cluster.md):
# make cluster CONFIG=config/paper.yaml [JOBS=64] [CLUSTER_ARGS="--unlock" | "-n" | ...].
# The SLURM logs go to <results root>/logs/slurm/.
JOBS ?= 64
cluster: $(STAMP)  ## the grid on SLURM (the profile slurm/): make cluster CONFIG=config/paper.yaml JOBS=64
	root="$$($(RESULTS_ROOT))" && $(BIN)/snakemake --profile slurm -j $(JOBS) \
	  --slurm-logdir "$$root/logs/slurm" $(CONFIGFILE) $(CLUSTER_ARGS)

preflight: $(STAMP)  ## config, data, weights, disk (and --slurm: one GPU job) checked before a run
	$(BIN)/python -m workflow_scripts.preflight $(CONFIGFILE) $(PREFLIGHT_ARGS)

# The paper's five architectures at real size with random weights, written offline from
# config/architectures.yaml (float16 safetensors, ~1.9 GB; skipped when already current).
REAL_MODELS := models/real
real-models: $(STAMP)  ## wav2vec2-base/-large, wavlm-base/-large, hubert-base as random checkpoints
	$(BIN)/python -m workflow_scripts.backbones.architectures $(REAL_MODELS)

# The two LLM decoders of config/speechllm-paper.yaml (Qwen2.5-0.5B, Llama-3.2-1B) at real size
# with random weights and an offline stand-in tokenizer, from config/architectures.yaml
# (`decoders`; float16 safetensors, ~3.4 GB; skipped when already current). docs/speechllm.md.
real-decoders: $(STAMP)  ## models/real/qwen2.5-0.5b and llama3.2-1b as random checkpoints
	$(BIN)/python -m workflow_scripts.speechllm.real_decoders $(REAL_MODELS)

# config/paper-smoke.yaml end to end on CPU in its own folder (smoke/paper/: results, logs,
# Snakemake's metadata; results_dir=results there, whatever the site file says), so the
# default grid's results root stays untouched; every failing job is
# reported (--keep-going). SMOKE_MEM_MB caps the rules' planned memory (mem_mb, scaled by the
# model) summed over concurrent jobs: 24000 never runs two large-model jobs at once. Wall time
# and the largest job's peak RSS go to smoke/paper/time.txt (GNU time, where installed).
SMOKE := smoke/paper
SMOKE_MEM_MB ?= 24000
TIME := $(shell test -x /usr/bin/time && echo /usr/bin/time -v -o $(SMOKE)/time.txt)
smoke-paper: real-models  ## the five at real size through every stage (SMOKE_ARGS: more snakemake options)
	mkdir -p $(SMOKE)
	ln -sfn $(CURDIR)/config.yaml $(SMOKE)/config.yaml
	ln -sfn $(CURDIR)/models $(SMOKE)/models
	$(TIME) $(BIN)/snakemake --profile profiles/local --directory $(SMOKE) --keep-going \
	  --resources mem_mb=$(SMOKE_MEM_MB) --configfile $(CURDIR)/config/paper-smoke.yaml \
	  --config results_dir=results $(SMOKE_ARGS)
	@test ! -f $(SMOKE)/time.txt || grep -E "Elapsed|Maximum resident" $(SMOKE)/time.txt
