#!/usr/bin/env bash
# The whole test suite: lint, forge (unit, fuzz, invariant), then pytest (which ends with its summary line).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] forge test"
forge test
echo "[test] pytest"
exec .venv/bin/python -m pytest -q "$@"
