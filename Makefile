# rnnlm: `make run` serves a demo model, `make test` runs the suite.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench clean

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
	$(BIN)/mypy rnnlm models training app

# Builds the demo model once (about 3 minutes on 2 CPU cores), then serves it.
run: install
	$(BIN)/rnnlm demo --out checkpoints
	$(BIN)/rnnlm serve --models checkpoints --host 0.0.0.0 --port 8000

bench: install
	$(BIN)/python bench/bench_service.py --make-untrained /tmp/rnnlm-bench-ckpt
	$(BIN)/python bench/bench_service.py /tmp/rnnlm-bench-ckpt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
