# Fruits! p8 — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Inputs from outside the repo: a Fruits-360 copy and Keras's weights cache (optional).
FRUITS360_DIR ?=
KERAS_HOME ?=
export FRUITS360_DIR KERAS_HOME
SAMPLE := data_sample/images
DEMO_OUT := results/sample

.DEFAULT_GOAL := help
S3_DIR := .cache/s3
S3_PORT ?= 8333
BENCH_SIZES ?= 2000,8000,0
# `make classifier PRECISION=int8`: both runs calibrated on the same images (Training-subset).
PRECISION ?= fp32
# Photo-like variants of each training image, for the photo model (README, "Real photos");
# `make classifier AUGMENT=0`: the Fruits-360 regression alone (featurizes 5 times fewer images).
AUGMENT ?= 4
TRAIN_ARGS ?=
OUTSIDE_PHOTOS ?= $(FRUITS360_DIR)/../outside-photos
PRECISION_ARGS := --precision $(PRECISION)$(if $(filter int8,$(PRECISION)), --calibration "$(FRUITS360_DIR)/Training-subset")
.PHONY: help install jars s3 demo sample notebooks bench bench-cluster bench-listing cluster cluster-stop classifier evaluate test lint format clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/p8: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	extras=spark,notebooks,dev; command -v java >/dev/null || [ -n "$$JAVA_HOME" ] || extras=$$extras,java; \
	$(BIN)/python -m pip install -q -e ".[$$extras]"
	touch $@

install: $(BIN)/p8 jars ## create .venv/, install p8lib with its pinned dependencies and the S3A jars (idempotent)

jars: $(BIN)/p8 ## fetch and verify hadoop-aws + aws-java-sdk-bundle (skipped when cached)
	$(BIN)/p8 jars >/dev/null

s3: install ## run a local S3 server (SeaweedFS) on 127.0.0.1:$(S3_PORT); needs AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
	@[ -n "$$AWS_ACCESS_KEY_ID" ] && [ -n "$$AWS_SECRET_ACCESS_KEY" ] || { echo "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY first"; exit 2; }
	mkdir -p $(S3_DIR)
	@echo "S3 endpoint: http://127.0.0.1:$(S3_PORT)  (p8 run --s3-endpoint http://127.0.0.1:$(S3_PORT) ...)"
	$(BIN)/weed mini -dir=$(S3_DIR) -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=$(S3_PORT) -admin.ui=false -webdav=false

sample: install ## materialize the 34-image sample into data_sample/images
	$(BIN)/p8 sample --dest $(SAMPLE)

demo: sample ## get the sample and weights, run the pipeline on it, print where the results are
	$(BIN)/p8 run --images $(SAMPLE) --output $(DEMO_OUT) --mode overwrite

notebooks: sample ## execute notebooks/P8_local.ipynb into results/ (and P8_AWS.ipynb when AWS_IMAGES=s3://… [AWS_OUTPUT=…])
	$(BIN)/p8 notebook P8_local --results results
	@if [ -n "$$AWS_IMAGES" ]; then $(BIN)/p8 notebook P8_AWS --results results -p images "$$AWS_IMAGES" -p output "$${AWS_OUTPUT:-$$AWS_IMAGES-results}" $${AWS_ENDPOINT_URL:+-p s3_endpoint $$AWS_ENDPOINT_URL}; fi

bench: install ## measure img/s, stage times, peak memory vs the bare model (BENCH_SIZES=2000,8000,0; 0 = all of $FRUITS360_DIR/Test)
	$(BIN)/python benchmarks/bench.py --sizes $(BENCH_SIZES) --out results/bench.json --run-args '$(PRECISION_ARGS)'

bench-cluster: install ## the same 2,000 images on a standalone cluster of 1 then 2 one-core workers: speed-up
	$(BIN)/python benchmarks/bench_scale.py cluster --n 2000

bench-listing: install ## p8 run --dry-run on 200,000 image files (hard links): seconds and peak memory
	$(BIN)/python benchmarks/bench_scale.py listing --n 200000

cluster: install ## start a Spark standalone master + 2 workers on 127.0.0.1 (pyspark's spark-class)
	$(BIN)/python -m p8lib.cluster start --dir .cache/cluster --workers 2

cluster-stop: ## stop the cluster that `make cluster` started (by pid)
	$(BIN)/python -m p8lib.cluster stop --dir .cache/cluster

classifier: install ## featurize Training-subset (+ AUGMENT photo-like variants each) and Test, train and evaluate the classifier (results/; PRECISION=fp32|bf16|int8)
	@test -n "$$FRUITS360_DIR" || { echo "make classifier: set FRUITS360_DIR to a Fruits-360 folder holding Training-subset/ and Test/" >&2; exit 2; }
	$(BIN)/p8 run --images "$$FRUITS360_DIR/Training-subset" --output results/features-train --mode overwrite --augment $(AUGMENT) $(PRECISION_ARGS)
	$(BIN)/p8 run --images "$$FRUITS360_DIR/Test" --output results/features-test --mode overwrite $(PRECISION_ARGS)
	$(BIN)/p8 train --features results/features-train --test results/features-test --model results/model --mode overwrite $(TRAIN_ARGS)

evaluate: install ## score results/model on real shop photos (OUTSIDE_PHOTOS: measuring only, never training)
	@test -d "$(OUTSIDE_PHOTOS)/images" || { echo "make evaluate: no $(OUTSIDE_PHOTOS)/images: set OUTSIDE_PHOTOS (or FRUITS360_DIR, beside it)" >&2; exit 2; }
	rm -rf results/evaluation
	$(BIN)/p8 evaluate --model results/model --images "$(OUTSIDE_PHOTOS)/images" --labels "$(OUTSIDE_PHOTOS)/labels.json" --output results/evaluation

test: install ## run the test suite (needs FRUITS360_DIR; offline with KERAS_HOME seeded)
	$(BIN)/python -m pytest

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check p8lib tests benchmarks
	$(BIN)/ruff format --check p8lib tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m p8lib.notebook notebooks/*.ipynb

format: install ## apply ruff's formatting and import order
	$(BIN)/ruff check --fix p8lib tests benchmarks
	$(BIN)/ruff format p8lib tests benchmarks

clean: ## remove generated results and caches (keeps .venv)
	rm -rf results $(SAMPLE) .pytest_cache .mypy_cache .ruff_cache spark-warehouse
