#!/usr/bin/env bash
# GEMM A/B on one H200: the backend's GEMM sweep against torch.matmul with the backend's input pattern, with
# torch.randn inputs, and with the pattern on a non-default stream; REPS rounds, the variants' order rotating, GPU
# clocks sampled alongside (nvidia-smi, read only). Long windows (1 s warm-up, 10 steps of 20 GEMMs per shape).
# Usage, from the repository root: calibration/scripts/gemm_ab_h200x1.sh OUT [REPS]
set -u
OUT=$1
REPS=${2:-3}
. "$(dirname "$0")/device_env.sh"  # NVLS off, torch's NCCL/cuBLAS first on the library path, build_gpu, $B
R=$OUT/r
mkdir -p "$R"
REV=$(revision)
REV=$REV BENCH=ON build_gpu "$R/build.log" gemm_sweep_bench || exit 1
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active \
  --format=csv -lms 100 > "$R/clocks.csv" 2>&1 &
SAMPLER=$!
S="8192x8192x8192 4096x8192x4096 4096x4096x4096 16384x2048x2048"
G="-n 20 --steps 10 --warmup-ms 1000"
run_variant() {  # name rep
  echo "$1 $2 start $(date +%H:%M:%S.%N)" >> "$R/marks.txt"
  case $1 in
    backend) timeout 120 $B/bench/backend/gemm_sweep_bench $G -s $S -o "$R/ab.$1.$2.json" ;;
    torch_pattern) timeout 120 python3 calibration/scripts/torch_gemm.py $G -s $S -o "$R/ab.$1.$2.json" ;;
    torch_randn) timeout 120 python3 calibration/scripts/torch_gemm.py $G -s $S --data randn -o "$R/ab.$1.$2.json" ;;
    torch_side) timeout 120 python3 calibration/scripts/torch_gemm.py $G -s $S --side-stream -o "$R/ab.$1.$2.json" ;;
  esac > "$R/ab.$1.$2.log" 2>&1
  echo "$1 $2 end $(date +%H:%M:%S.%N)" >> "$R/marks.txt"
}
V=(backend torch_pattern torch_randn torch_side)
for rep in $(seq 1 "$REPS"); do
  for i in 0 1 2 3; do run_variant "${V[$(( (i + rep - 1) % 4 ))]}" "$rep"; done
done
kill "$SAMPLER" 2>/dev/null
python3 - "$R" <<'PY'
import json, glob, sys, collections
r = sys.argv[1]
t = collections.defaultdict(dict)
for p in sorted(glob.glob(r + "/ab.*.json")):
    _, v, rep, _ = p.split("/")[-1].split(".")
    for x in json.load(open(p))["results"]:
        t[f"{x['m']}x{x['n']}x{x['k']}"].setdefault(v, []).append(round(x["tflops"], 1))
for shape, vs in t.items():
    print(shape, " | ".join(f"{v}: {vals}" for v, vals in sorted(vs.items())))
PY
