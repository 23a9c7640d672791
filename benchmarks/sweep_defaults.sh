#!/bin/bash
# Candidate CPU default sizes: the ranking of magnitude, Wanda, SparseGPT, ADMM-Grad at 50 %, 2:4, 70 %
# (one setting at a time, so that the closest comparisons finish first on a loaded machine).
# usage: benchmarks/sweep_defaults.sh NSAMPLES SEQLEN EVAL_WINDOWS [SEED]   (float32 forwards on the CPU)
# SEED (default 0) draws other calibration windows; its runs go to <dir>_s<SEED> (seed 0: <dir>).
cd "$(dirname "$0")/.."
PY=${PY:-/work/main/.venv/bin/python}
n=$1; L=$2; e=$3; seed=${4:-0}
d=benchmarks/results/defaults_sweep/c${n}x${L}_e${e}
[ "$seed" != 0 ] && d=${d}_s${seed}
mkdir -p $d
for setting in "0.5 unstructured" "0.5 2:4" "0.7 unstructured"; do
  set -- $setting
  echo "=== $(date -u) start $d sparsity $1 pattern $2 load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m pruning sweep --solvers admm,sparsegpt,wanda,magnitude --sparsities $1 --patterns $2 \
     --nsamples $n --seqlen $L --eval-windows $e --seed $seed --device cpu --dtype float32 \
     --json-dir $d --resume --quiet
  echo "=== $(date -u) end $d sparsity $1 pattern $2 load $(cut -d' ' -f1-3 /proc/loadavg)"
done
