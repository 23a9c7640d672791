#!/usr/bin/env bash
# Issue 17 §3a: per-document vs stream calibration windows, SparseGPT 2:4 (then Wanda 50 %), 3 seeds each,
# 32 × 512 calibration, perplexity on 32 × 512 evaluation windows; one report JSON per run (skipped if present).
#   bash benchmarks/run_sampling.sh [OUT_DIR] [PYTHON]
set -u
OUT=${1:-benchmarks/results/sampling}
PY=${2:-python}
mkdir -p "$OUT"
for spec in "sparsegpt 2:4 0.5" "wanda unstructured 0.5"; do
  read -r s pat sp <<<"$spec"
  for seed in 0 1 2; do
    for sampling in document stream; do
      f="$OUT/${s}_${pat/:/-}_${sp}_${sampling}_s${seed}.json"
      [ -s "$f" ] && continue
      echo "== $s $pat $sp $sampling seed $seed $(date -u +%T)"
      "$PY" -m pruning run --solver "$s" --pattern "$pat" --sparsity "$sp" --nsamples 32 --seqlen 512 \
        --eval-windows 32 --eval-seqlen 512 --seed "$seed" --sampling "$sampling" --device cpu --dtype float32 \
        --quiet --json "$f" 2>&1 | grep -E "^perplexity|^time per phase|Error"
    done
  done
done
echo "== done $(date -u +%T)"
