#!/usr/bin/env python3
"""A first check of a power-cap clock governor against measured clocks (not a model the simulator uses).

Usage: power_governor_check.py TRACES_DIR
Per measured trace and rank: the share of the median step each class kept the GPU busy (compute kernels by class,
communication ops together), then the clock f at which P(f) = P_idle + sum_c share_c * D_c * (f / f_max)^gamma meets
the 700 W limit (f_max if it never does), printed next to the clock the GPU monitor measured. The figures come from the
power-mix microbenchmark on one H200 (calibration/measured/h200x1/power_mix/README.md): P_idle 116 W (intercept of
mean power against GEMM share beside idle time), GEMM 884 W at 1980 MHz (slope of the same fit), gamma 1.91 (GEMM
alone: 686 W at 1575 MHz), attention 427 W (alone, uncapped), HBM-bound kernels 384 W (beside 22 % GEMM), and the
collective sweeps' mean power on two H200 (calibration/measured/h200x2/coll_gate_a.raw.jsonl: ~200 W above idle)."""
import glob
import json
import os
import statistics
import sys
D={'gemm':884,'grouped_gemm':884,'attention_fwd':427,'attention_bwd':427,'elementwise':384,'optimizer':384,'comm':200}
P0=116; G=1.91; CAP=700; FMAX=1980
def solve(u):
  def P(f): return P0+sum(u.get(c,0)*D[c]*(f/FMAX)**G for c in D)
  if P(FMAX)<=CAP: return FMAX
  lo,hi=300,FMAX
  for _ in range(50):
    m=(lo+hi)/2
    if P(m)>CAP: hi=m
    else: lo=m
  return lo
for f in sorted(glob.glob(os.path.join(sys.argv[1], '*.trace.json'))):
  t=json.load(open(f)); ops={o['id']:o for o in t['schedule']['ops']}
  step=statistics.median(t['step_times_ns'])
  ranks=sorted(set(r['rank'] for r in t['records']))
  busy={r:{} for r in ranks}
  for r in t['records']:
    o=ops[r['op']]
    if o['kind']=='compute': c=o['kernel']['class']
    elif o['kind'] in ('collective','send','recv'): c='comm'
    else: continue
    if c=='attention': c='attention_bwd' if o['kernel'].get('backward') else 'attention_fwd'
    busy[r['rank']][c]=busy[r['rank']].get(c,0)+(r['end']-r['start'])
  c=t['context']
  pred=[solve({k:v/step for k,v in busy[r].items()}) for r in ranks]
  print('%-20s measured %-14s governor %s'%(os.path.basename(f)[:-11], c.get('gpu_monitor.sm_clock_mhz.median'), ','.join('%.0f'%x for x in pred)))
