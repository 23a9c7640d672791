#!/bin/bash
# Time to a served page and to a ready page (Run enabled) from an empty cache: python app.py with a fresh
# PRUNING_LAB_CACHE; then one dense 512-token forward (best of 5) measured right after, for the unit.
# usage: benchmarks/cold_start.sh [PORT]
cd "$(dirname "$0")/.."
PY=${PY:-/work/main/.venv/bin/python}
PORT=${1:-7911}
CACHE=$(mktemp -d /tmp/pl-cold-XXXX)
t0=$(date +%s.%N)
PRUNING_LAB_CACHE=$CACHE PRUNING_LAB_PORT=$PORT $PY -u app.py > $CACHE.log 2>&1 &
pid=$!
served=""
while kill -0 $pid 2>/dev/null; do
  now=$(date +%s.%N)
  if [ -z "$served" ] && curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$PORT/ 2>/dev/null | grep -q 200; then
    served=$(echo "$now - $t0" | bc); echo "page served after $served s"
  fi
  if grep -q "ready after" $CACHE.log; then echo "ready: $(grep 'ready after' $CACHE.log) (wall $(echo "$now - $t0" | bc) s)"; break; fi
  sleep 0.5
done
cat $CACHE.log
kill $pid
PRUNING_LAB_CACHE=$CACHE $PY - <<'PY'
import time, torch
from pruning.api import get_model
m, _, _ = get_model("smollm2-135m")
ids = torch.randint(0, 1000, (1, 512))
best = 9e9
with torch.no_grad():
    for _ in range(5):
        t = time.perf_counter(); m(input_ids=ids, use_cache=False); best = min(best, time.perf_counter() - t)
print(f"forward (512 tokens, fp32, best of 5): {best:.3f} s")
PY
rm -rf $CACHE
