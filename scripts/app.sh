#!/usr/bin/env bash
# Set up (if needed) and start the app on http://127.0.0.1:7860 with the embedded SmolLM2-135M.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python app.py "$@"
