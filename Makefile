# encore: the two commands a new machine needs are `make demo` and `make test`.
# Each creates .venv and installs encore into it first (Python >= 3.11, Java 17+, Maven needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck bench bench-quick clean

$(STAMP): pyproject.toml streaming/kafka/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,dev]"
	touch $(STAMP)

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test,dev,bench]"
	touch $(VENV)/.bench

## demo: the main job end to end (local broker, simulated listeners, live daemon, report)
demo: $(STAMP)
	$(BIN)/encore demo

## test: lint, import contracts, then every test; the suite starts and stops its own broker
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest

## test-fast: the edit loop: unit tests with no broker and nothing marked slow (about two minutes)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not slow" -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/pyright

## bench: every benchmark suite at full size, then benchmarks/README.md rendered from its JSON;
## bench-quick: the CI smoke run (its page in bench-out/README.md)
bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks all --out bench-out
	$(BIN)/python -m benchmarks report bench-out --to benchmarks/README.md

bench-quick: $(VENV)/.bench
	$(BIN)/python -m benchmarks all --quick --out bench-out

clean:
	rm -rf $(VENV) .encore bench-out demo-out
