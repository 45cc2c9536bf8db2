# P2P-LLM — the two commands of the README are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: setup demo test test-python test-forge lint gas artifacts benchmarks figures clean

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

# Rebuild the contract ABIs + bytecode the package ships (p2pllm/contracts/*.json) after editing contracts/src.
artifacts: setup
	@$(VENV)/python -m devkit.compile

gas: setup
	@$(VENV)/python benchmarks/gas.py

# Every benchmark, one JSON line each (several minutes; see the README's table).
benchmarks: setup
	@for b in gas routing shards hop_overhead relay_copy node_throughput load e2e wan gateway verification; do $(VENV)/python benchmarks/$$b.py 2>/dev/null; done

figures: setup
	@$(VENV)/python scripts/figures.py --out figures/

clean:
	rm -rf contracts/out contracts/cache .pytest_cache .ruff_cache
