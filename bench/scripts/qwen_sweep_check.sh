#!/usr/bin/env bash
# Issue 8's check on a many-core machine: the Qwen3-30B-A3B sweep (21,951 points) is killed halfway, resumed to the
# end with the report, CSV and JSON, then run again as N shards that are merged and compared with the single run
# point for point. Usage: bench/scripts/qwen_sweep_check.sh TWINSTEP OUT [JOBS] [SHARDS]
set -u
T=$1
OUT=$2
JOBS=${3:-$(nproc)}
SHARDS=${4:-4}
mkdir -p "$OUT"
ARGS="--model qwen3-30b-a3b --cluster h100-superpod --gpus 16,32,64,128 --overlap none,ep,ep+delay_wgrad --parallel auto"
LOG=$OUT/check.log
TOTAL=$($T sweep $ARGS --dry-run -o "$OUT/dry.jsonl" 2>/dev/null | grep -c '^[0-9]')
echo "points: $TOTAL ($(date +%T))" | tee -a "$LOG"
rm -f "$OUT/q.jsonl"
$T sweep $ARGS -o "$OUT/q.jsonl" -j "$JOBS" -q > "$OUT/run1.out" 2>&1 &
PID=$!
while kill -0 $PID 2>/dev/null; do
  if [ "$(wc -l < "$OUT/q.jsonl" 2>/dev/null || echo 0)" -ge $((TOTAL / 2)) ]; then
    pkill -9 -P $PID; kill -9 $PID; echo "killed at $(wc -l < "$OUT/q.jsonl") lines ($(date +%T))" | tee -a "$LOG"; break
  fi
  sleep 1
done
wait $PID 2>/dev/null
/usr/bin/time -f "resume: %e s wall" -a -o "$LOG" $T sweep $ARGS -o "$OUT/q.jsonl" -j "$JOBS" \
  --report "$OUT/q.html" --csv "$OUT/q.csv" --json "$OUT/q.json" > "$OUT/run2.out" 2>&1
echo "resume exit $? ($(date +%T)); lines $(wc -l < "$OUT/q.jsonl")" | tee -a "$LOG"
grep -o '"status":"[a-z_]*"' "$OUT/q.jsonl" | sort | uniq -c | tee -a "$LOG"
for i in $(seq 0 $((SHARDS - 1))); do
  $T sweep $ARGS --shard $i/$SHARDS -o "$OUT/shard$i.jsonl" -j $((JOBS / SHARDS > 0 ? JOBS / SHARDS : 1)) -q \
    > "$OUT/shard$i.out" 2>&1 &
done
wait
echo "shards done ($(date +%T))" | tee -a "$LOG"
$T merge "$OUT"/shard*.jsonl -o "$OUT/merged.jsonl" > "$OUT/merge.out" 2>&1
if cmp -s "$OUT/merged.jsonl" "$OUT/q.jsonl"; then echo "merged shards == single run" | tee -a "$LOG"
else echo "merged shards DIFFER from the single run" | tee -a "$LOG"; diff "$OUT/merged.jsonl" "$OUT/q.jsonl" | head -5 >> "$LOG"; fi
