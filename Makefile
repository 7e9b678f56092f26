# rnnlm: `make run` serves a demo model, `make test` runs the suite.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench bench-quality bench-deps docker-test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p rnnlm

# Builds the demo model once (1,000 steps from a fixed seed: 2-3 minutes on 2 CPU
# cores), then serves it.
run: install
	$(BIN)/rnnlm demo --out checkpoints
	$(BIN)/rnnlm serve --models checkpoints --host 0.0.0.0 --port 8000

# Every benchmark in one run (~20-25 min on 2 CPU cores): JSON lines on stdout,
# bench/results.jsonl and bench/RESULTS.md. Word-level training runs get
# BENCH_BUDGET seconds (default 240), char and sentencepiece BENCH_CHAR_BUDGET
# (default half of it). Needs Debian's fortunes (see bench-deps).
bench: install
	@$(BIN)/python bench/run.py

# The quality stages with 10-minute training budgets for every model, issue #31's
# runs and mixers beside the defaults (~100 min): bench/results-600s.jsonl and
# bench/RESULTS-600s.md.
bench-quality: install
	@BENCH_BUDGET=600 BENCH_CHAR_BUDGET=600 BENCH_NAME=600s $(BIN)/python bench/run.py \
		--only data,ngram,corpus,rnnlm-ngram,quality,mixing

# What `make bench` needs from Debian (as root): the corpus, and a compiler for KenLM.
bench-deps:
	apt-get update
	apt-get install -y fortunes fortunes-min build-essential cmake \
	    libboost-program-options-dev libboost-system-dev libboost-thread-dev \
	    libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The image and docker-compose.yml for real: engine (installed and started if missing),
# build, compose up, routes, training profile, scaling, volume; cleans up after itself.
docker-test:
	bash docker/test.sh
