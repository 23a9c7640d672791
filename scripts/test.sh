#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: fast tests on tiny random models, plus the real-model
# (slow) and browser tests. Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow and not browser"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest -m "not gpu" -p no:cacheprovider --timeout=900 "$@"
