#!/usr/bin/env bash
# One prepared GPU run (<= 8 minutes on one GPU): SmolLM2 at 128 x 2048 with SparseGPT / ADMM-Grad / SparseFW
# (T = 2000) per phase and batched vs batch 1, a random-init Llama-3-8B-shaped model (2 blocks) per block, with and
# without --offload cpu, and 2:4 semi-structured vs dense matmuls. Writes JSON (default
# benchmarks/results/gpu_check.json). Without a GPU (or with --dry-run) a tiny model runs in well under a minute.
#   benchmarks/gpu_check.sh [--dry-run] [--out FILE] [--only smollm2,llama8b,sparse_2of4]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="python3"; fi
fi
cd "$root"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$py" "$here/gpu_check.py" "$@"
