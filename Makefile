# P2P-LLM — the two commands of the README are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: setup demo test test-python test-forge lint gas benchmarks clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(VENV)/python scripts/demo.py

test: setup
	@bash scripts/test.sh

test-python: setup
	@$(VENV)/python -m pytest -q

test-forge: setup
	@forge test

lint: setup
	@$(VENV)/ruff check .

gas: setup
	@$(VENV)/python benchmarks/gas.py

clean:
	rm -rf contracts/out contracts/cache .pytest_cache .ruff_cache
