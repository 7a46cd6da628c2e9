#!/usr/bin/env python3
"""Judges a fitted profile's collective and p2p figures on measurements it was not fitted from.

Usage: coll_oos.py FIT_LOG RAW [RAW ...] [--skip-first NAME]
       coll_oos.py --loo PROFILE RAW
FIT_LOG is the log of `twinstep calibrate --fit` (its per-size lines: probe group, bytes, measured, simulated); each
RAW is a raw file of another run of the same coll.*/p2p.* groups. Prints, per RAW and group, the mean and max
|simulated - measured| / measured over the sizes and every size beyond 5 %, as a markdown table. --skip-first NAME
leaves out the first size of RAW files whose path contains NAME (runs before the suite's warm-up op, whose first
size absorbed the step-start skew).
--loo: leave-one-out over the bus_efficiency tables of PROFILE (fitted from RAW, two-rank groups): each interior
table point is predicted from its two neighbours (log-linear, as the simulator interpolates) with the entry's
latency, against RAW's measurement there. all_to_all points are keyed by the bytes one GPU sends (even split: half
the size; the suite's uneven split on two ranks: two thirds, in 16-byte units).
"""
import json
import math
import re
import sys


def load_raw(path):
    out = {}
    with open(path) as f:
        for line in f.read().splitlines()[1:]:
            j = json.loads(line)
            if j["group"].startswith(("coll.", "p2p.")):
                out[j["group"]] = {m["size"]: m["value_s"] * 1e6 for m in j["measurements"]}
    return out


def a2a_key(size, uneven):
    units = 3 if uneven else 2
    unit = max(16, (size // units) // 16 * 16)
    return unit * (2 if uneven else 1)


def leave_one_out(profile_path, raw_path):
    prof = json.load(open(profile_path))
    raw = load_raw(raw_path)
    meas = {}
    for kind in ("all_reduce", "all_gather", "reduce_scatter", "broadcast"):
        meas[kind] = {int(s): t for s, t in raw[f"coll.{kind}.span2"].items()}
    meas["all_to_all"] = {}
    for group, uneven in (("coll.all_to_all.span2", False), ("coll.all_to_all_uneven.span2", True)):
        for s, t in raw[group].items():
            meas["all_to_all"][a2a_key(int(s), uneven)] = t
    meas["send_recv"] = {int(s): t for s, t in raw["p2p.send_recv"].items()}
    errs = {}
    for c in prof["collectives"]:
        tab, a, kind = c.get("bus_efficiency", []), c["base_latency"] * 1e6, c["kind"]
        for j in range(1, len(tab) - 1):
            (k0, e0), (k, e), (k1, e1) = tab[j - 1], tab[j], tab[j + 1]
            f = (math.log(k) - math.log(k0)) / (math.log(k1) - math.log(k0))
            t = meas[kind][int(round(k))]
            pred = a + (t - a) * e / (e0 + f * (e1 - e0))
            errs.setdefault(kind, []).append(((pred - t) / t * 100, int(round(k)), c["protocol"]))
    print("| entry | interior points | mean abs err | max abs err | points beyond 5 % |")
    print("|---|---:|---:|---:|---|")
    for kind, v in errs.items():
        bad = " ".join(f"{p} {k // 1024} KiB {e:+.1f}%" for e, k, p in sorted(v, key=lambda x: x[1]) if abs(e) > 5)
        mean = sum(abs(e) for e, _, _ in v) / len(v)
        print(f"| {kind} | {len(v)} | {mean:.2f} % | {max(abs(e) for e, _, _ in v):.2f} % | {bad or '-'} |")


def main(argv):
    if argv and argv[0] == "--loo":
        leave_one_out(argv[1], argv[2])
        return
    skip = []
    args = []
    i = 0
    while i < len(argv):
        if argv[i] == "--skip-first":
            skip.append(argv[i + 1])
            i += 2
        else:
            args.append(argv[i])
            i += 1
    fit_log, raws = args[0], args[1:]
    sim = {}
    pat = re.compile(r"\s+((?:coll|p2p)\S+)\s+(\d+) B\s+measured\s+([\d.]+) us\s+simulated\s+([\d.]+) us")
    with open(fit_log) as f:
        for line in f:
            m = pat.match(line)
            if m:
                sim.setdefault(m.group(1), {})[float(m.group(2))] = float(m.group(4))
    for raw in raws:
        meas = load_raw(raw)
        print(f"\n{raw}\n")
        print("| group | sizes | mean abs err | max abs err | sizes beyond 5 % |")
        print("|---|---:|---:|---:|---|")
        for g in sorted(sim):
            if g not in meas:
                continue
            sizes = sorted(s for s in sim[g] if s in meas[g])
            if any(k in raw for k in skip):
                sizes = sizes[1:]
            errs = [(sim[g][s] - meas[g][s]) / meas[g][s] * 100 for s in sizes]
            bad = " ".join(f"{int(s) // 1024} KiB {e:+.1f}%" for s, e in zip(sizes, errs) if abs(e) > 5)
            mean = sum(abs(e) for e in errs) / len(errs)
            print(f"| {g} | {len(errs)} | {mean:.2f} % | {max(abs(e) for e in errs):.2f} % | {bad or '-'} |")


if __name__ == "__main__":
    main(sys.argv[1:])
