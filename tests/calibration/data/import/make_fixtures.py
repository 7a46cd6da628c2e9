#!/usr/bin/env python3
"""Writes the import-trace test fixtures from the committed tiny schedules, with a known timeline, so the tests can
check the imported records against it exactly (expected_*.json). Standard library only; rerun from this folder:
    python3 make_fixtures.py
(moe.schedule.json and tp2.schedule.json come from `twinstep lower --model tiny_moe.model.json --gpus 1 --seq 128`
and `twinstep lower --model tiny_dense.model.json --gpus 2 --tp 2 --seq 128`.)

Per rank the ops run one after another in program order: the host opens a range named as the op (PyTorch:
record_function, "cat": "user_annotation"; Nsight Systems: an NVTX push/pop range), runs the framework op
(record_shapes "Input Dims" for GEMMs and attention), launches the kernel (cudaLaunchKernel with a correlation id)
and the GPU runs it for a closed-form time (below) once the launch is done and the previous kernel ended. A grouped
GEMM launches one kernel per group; a host_sync is a cudaStreamSynchronize inside its target's range (the MoE
split-size copy's, the grad-norm all-reduce's). Host ops have no GPU side. Two steps in the Kineto fixtures, the second 10 % slower, so the
import's per-op medians are the mean of the two. Files:
  kineto_moe.json            PyTorch profiler trace of moe.schedule.json (torch 2.x export_chrome_trace layout)
  kineto_moe_unnamed.json    the same without record_function ranges (matching by kind, shape and order)
  kineto_other_model.json    the same with the GEMMs of another hidden size (refused: another model)
  kineto_truncated.json      the first 20000 bytes of kineto_moe.json (refused: truncated)
  tp2/trace_rank{0,1}.json   both ranks of tp2.schedule.json, one clock
  tp2_skew/trace_rank{0,1}.json  the same with rank 1's clock 5 ms ahead (refused: clock skew)
  nsys_moe.sqlite            an Nsight Systems export of one step of moe.schedule.json (the documented tables)
  nsys_no_kernels.sqlite     an SQLite file without the kernel table (refused: not a CUDA trace export)
  expected_moe.json, expected_tp2.json  per op id: issue, start, end (ns from the step origin, medians over the
                             steps; expected_moe.json's records_step0: the first step alone)
"""
import json
import os
import sqlite3

HERE = os.path.dirname(os.path.abspath(__file__))
US = 1000  # ns


def duration_ns(op, scale):
    """The GPU time of an op in the fixtures: closed forms of its shape (not a model of any GPU)."""
    if op["kind"] == "collective":
        return int((op["bytes"] / 50e9 * 1e9 + 8000) * scale)
    k = op["kernel"]
    c = k["class"]
    if c == "gemm":
        t = 2 * k["m"] * k["n"] * k["k"] / 100e12
    elif c == "grouped_gemm":
        t = sum(2 * m * k["n"] * k["k"] / 50e12 for m in k["m"])
    elif c == "attention":
        t = 4 * k["batch"] * k["heads_q"] * k["seq_q"] * k["seq_kv"] * k["head_dim"] / 80e12 * (2.5 if k["backward"] else 1)
    elif c == "optimizer":
        t = k["params"] * 16 / 2e12
    elif c == "memcpy":
        t = 3e-6
    else:
        t = k["bytes"] / 2e12
    return int(max(2000, t * 1e9) * scale)


def gemm_dims(op, hidden_scale):
    k = op["kernel"]
    return [[k["m"], k["k"] * hidden_scale], [k["k"] * hidden_scale, k["n"]]]


def kernel_name(op):
    if op["kind"] == "collective":
        return {"all_gather": "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
                "reduce_scatter": "ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
                "all_reduce": "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"}[op["collective"]]
    c = op["kernel"]["class"]
    if c in ("gemm", "grouped_gemm"):
        return "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"
    if c == "attention":
        return ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128>>"
                if op["kernel"]["backward"] else "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128>>")
    return "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>"


class Timeline:
    """Events of one rank: host ranges, ops, launches, waits; GPU kernels and copies."""

    def __init__(self, rank, t0_ns, corr0):
        self.rank, self.host, self.gpu = rank, t0_ns, t0_ns
        self.ranges, self.ops, self.launches, self.kernels, self.waits = [], [], [], [], []
        self.corr = corr0

    def launch(self, name, dur, kind="kernel", api="cudaLaunchKernel", op=None, nbytes=0):
        self.host += 2 * US
        at = self.host
        if op is not None:
            self.ops.append((op[0], at - 500, at + 2 * US, op[1]))
        self.launches.append((api, at, at + 3 * US, self.corr))
        start = max(self.gpu, at + 5 * US)
        self.kernels.append((kind, name, start, start + dur, self.corr, nbytes))
        self.gpu = start + dur
        self.corr += 1
        self.host = at + 4 * US
        return at, start, start + dur


def run_rank(sched, rank, t0, scale, hidden_scale=1, corr0=1):
    """Plays one step of `rank` into a Timeline; returns it and {op id: (issue, start, end)} absolute."""
    tl = Timeline(rank, t0, corr0)
    ops = [o for o in sched["ops"] if o["rank"] == rank]
    by_id = {o["id"]: o for o in sched["ops"]}
    rec = {}
    for op in ops:
        r0 = tl.host
        if op["kind"] == "host":
            continue
        if op["kind"] == "host_sync":
            continue  # played inside the target's range (below)
        name = op["name"]
        dur = duration_ns(op, scale)
        if op["kind"] == "collective":
            issue, start, end = tl.launch(kernel_name(op), dur, op=("record_param_comms", []))
            rec[op["id"]] = (issue, start, end)
        else:
            k = op["kernel"]
            c = k["class"]
            if c == "grouped_gemm":
                first = None
                total = sum(k["m"]) or 1
                for m in k["m"]:
                    part = max(1, dur * m // total)
                    got = tl.launch(kernel_name(op), part, op=("aten::mm", [[m, k["k"] * hidden_scale],
                                                                          [k["k"] * hidden_scale, k["n"]]]))
                    first = first or got
                rec[op["id"]] = (first[0], first[1], tl.gpu)
            elif c == "memcpy":
                issue, start, end = tl.launch("Memcpy DtoH (Device -> Pageable)", dur, kind="gpu_memcpy",
                                              api="cudaMemcpyAsync", op=("aten::_to_copy", [[k["bytes"] // 8]]),
                                              nbytes=k["bytes"])
                rec[op["id"]] = (issue, start, end)
            else:
                dims = None
                opname = "aten::add"
                if c == "gemm":
                    opname, dims = "aten::mm", gemm_dims(op, hidden_scale)
                elif c == "attention":
                    b, hq, hkv, s, d = k["batch"], k["heads_q"], k["heads_kv"], k["seq_q"], k["head_dim"]
                    opname = ("aten::_scaled_dot_product_flash_attention_backward" if k["backward"]
                              else "aten::_scaled_dot_product_flash_attention")
                    dims = [[b, hq, s, d], [b, hkv, s, d], [b, hkv, s, d]]
                rec[op["id"]] = tl.launch(kernel_name(op), dur, op=(opname, dims or [[k.get("bytes", 0) // 4]]))
        sync = [o for o in ops if o["kind"] == "host_sync" and o["target"] == op["id"]]
        if sync:  # the host waits for this op inside its range (a .item() or .cpu() of its result)
            w0 = tl.host
            tl.host = max(tl.host, rec[op["id"]][2]) + 1 * US
            tl.launches.append(("cudaStreamSynchronize", w0, tl.host, 0))
            tl.waits.append((w0, tl.host))
            rec[sync[0]["id"]] = (w0, w0, tl.host)
        tl.ranges.append((name, r0, tl.host + 1 * US))
        tl.host += 2 * US
    del by_id
    return tl, rec


def kineto_events(tl, pid, named=True):
    ev = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": "python3"}},
          {"ph": "M", "name": "thread_name", "pid": pid, "tid": pid, "args": {"name": "python3"}}]
    ext = 1

    def us(ns):
        return round(ns / 1000.0, 3)
    if named:
        for name, s, e in tl.ranges:
            ev.append({"ph": "X", "cat": "user_annotation", "name": name, "pid": pid, "tid": pid, "ts": us(s),
                       "dur": us(e - s), "args": {"External id": ext, "Record function id": 0, "Ev Idx": ext}})
            ext += 1
    for name, s, e, dims in tl.ops:
        args = {"External id": ext, "Record function id": 0, "Sequence number": ext, "Fwd thread id": 0, "Ev Idx": ext}
        if dims:
            args["Input Dims"] = dims
            args["Input type"] = ["c10::BFloat16"] * len(dims)
        ev.append({"ph": "X", "cat": "cpu_op", "name": name, "pid": pid, "tid": pid, "ts": us(s), "dur": us(e - s),
                   "args": args})
        ext += 1
    for api, s, e, corr in tl.launches:
        args = {"External id": ext, "cbid": 211, "correlation": corr}
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": api, "pid": pid, "tid": pid, "ts": us(s),
                   "dur": us(e - s), "args": args})
        ev.append({"ph": "s", "id": corr, "pid": pid, "tid": pid, "ts": us(s), "cat": "ac2g", "name": "ac2g"})
    for kind, name, s, e, corr, nbytes in tl.kernels:
        args = {"External id": ext, "device": tl.rank, "context": 1, "stream": 7, "correlation": corr}
        if kind == "kernel":
            args.update({"registers per thread": 168, "shared memory": 0, "grid": [132, 1, 1], "block": [384, 1, 1]})
        else:
            args.update({"bytes": nbytes, "memory bandwidth (GB/s)": 0.35})
        ev.append({"ph": "X", "cat": kind, "name": name, "pid": tl.rank, "tid": 7, "ts": us(s), "dur": us(e - s),
                   "args": args})
        ev.append({"ph": "f", "id": corr, "pid": tl.rank, "tid": 7, "ts": us(s), "cat": "ac2g", "name": "ac2g",
                   "bp": "e"})
    return ev


def kineto_doc(events, rank=None, world=None):
    doc = {"schemaVersion": 1,
           "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85045870592,
                                 "computeMajor": 9, "computeMinor": 0, "numSms": 132}],
           "record_shapes": 1, "with_stack": 0, "displayTimeUnit": "ms", "baseTimeNanoseconds": 1764979200000000000}
    if rank is not None:
        doc["distributedInfo"] = {"backend": "nccl", "rank": rank, "world_size": world}
    doc["traceEvents"] = events
    doc["traceName"] = "fixture"
    return doc


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


def median2(a, b):
    return (a + b) // 2


def expected(recs_per_step, origins):
    """Per op: the medians over steps of (issue, start, end) - step origin (two steps: the mean, rounded down)."""
    out = {}
    for op_id in recs_per_step[0]:
        rel = [[v - origins[i] for v in recs_per_step[i][op_id]] for i in range(len(recs_per_step))]
        out[str(op_id)] = [median2(rel[0][j], rel[1][j]) if len(rel) == 2 else rel[0][j] for j in range(3)]
    return out


def moe_fixtures():
    sched = json.load(open(os.path.join(HERE, "moe.schedule.json")))
    steps = []
    for i, scale in enumerate((1.0, 1.1)):
        steps.append(run_rank(sched, 0, 10_000_000 + i * 50_000_000, scale, corr0=1 + i * 100000))
    origins = [min(v[0] for v in rec.values()) for _, rec in steps]
    write_json(os.path.join(HERE, "expected_moe.json"),
               {"step_times_ns": [max(v[2] for v in rec.values()) - o for (_, rec), o in zip(steps, origins)],
                "records": expected([rec for _, rec in steps], origins),
                "records_step0": expected([steps[0][1]], origins[:1])})
    ev = kineto_events(steps[0][0], 4242) + kineto_events(steps[1][0], 4242)
    write_json(os.path.join(HERE, "kineto_moe.json"), kineto_doc(ev))
    write_json(os.path.join(HERE, "kineto_moe_unnamed.json"),
               kineto_doc(kineto_events(steps[0][0], 4242, named=False)))
    other, _ = run_rank(sched, 0, 10_000_000, 1.0, hidden_scale=2)
    write_json(os.path.join(HERE, "kineto_other_model.json"), kineto_doc(kineto_events(other, 4242)))
    text = open(os.path.join(HERE, "kineto_moe.json")).read()
    with open(os.path.join(HERE, "kineto_truncated.json"), "w") as f:
        f.write(text[:20000])
    write_sqlite(os.path.join(HERE, "nsys_moe.sqlite"), steps[0][0])
    empty = os.path.join(HERE, "nsys_no_kernels.sqlite")
    if os.path.exists(empty):
        os.remove(empty)
    db = sqlite3.connect(empty)
    db.execute("CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT NOT NULL)")
    db.commit()
    db.close()


def tp2_fixtures():
    sched = json.load(open(os.path.join(HERE, "tp2.schedule.json")))
    tls = [run_rank(sched, r, 10_000_000, 1.0) for r in (0, 1)]
    origin = min(min(v[0] for v in rec.values()) for _, rec in tls)
    recs = {}
    for _, rec in tls:
        recs.update(rec)
    write_json(os.path.join(HERE, "expected_tp2.json"),
               {"step_times_ns": [max(v[2] for v in recs.values()) - origin],
                "records": {str(k): [x - origin for x in v] for k, v in recs.items()}})
    for folder, skew in (("tp2", 0), ("tp2_skew", 5_000_000)):
        os.makedirs(os.path.join(HERE, folder), exist_ok=True)
        for r, (tl, _) in enumerate(tls):
            ev = kineto_events(tl, 4242 + r)
            if r == 1 and skew:
                for e in ev:
                    if "ts" in e:
                        e["ts"] = round(e["ts"] + skew / 1000.0, 3)
            write_json(os.path.join(HERE, folder, f"trace_rank{r}.json"), kineto_doc(ev))


def write_sqlite(path, tl):
    """The subset of Nsight Systems' documented SQLite export schema that import-trace reads."""
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.executescript("""
CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE TARGET_INFO_GPU (id INTEGER NOT NULL, name TEXT NOT NULL, busLocation TEXT, totalMemory INT);
CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INT NOT NULL, end INT NOT NULL, deviceId INT NOT NULL,
  contextId INT NOT NULL, streamId INT NOT NULL, correlationId INT, globalPid INT, demangledName INT NOT NULL,
  shortName INT NOT NULL, gridX INT, gridY INT, gridZ INT, blockX INT, blockY INT, blockZ INT,
  registersPerThread INT);
CREATE TABLE CUPTI_ACTIVITY_KIND_MEMCPY (start INT NOT NULL, end INT NOT NULL, deviceId INT NOT NULL,
  contextId INT NOT NULL, streamId INT NOT NULL, correlationId INT, globalPid INT, bytes INT NOT NULL,
  copyKind INT NOT NULL, srcKind INT, dstKind INT);
CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INT NOT NULL, end INT NOT NULL, eventClass INT NOT NULL,
  globalTid INT, correlationId INT, nameId INT NOT NULL, returnValue INT NOT NULL);
CREATE TABLE NVTX_EVENTS (start INT NOT NULL, end INT, eventType INT NOT NULL, rangeId INT, category INT,
  color INT, text TEXT, globalTid INT, endGlobalTid INT, textId INT, domainId INT);
""")
    strings = {}

    def sid(s):
        if s not in strings:
            strings[s] = len(strings) + 1
            db.execute("INSERT INTO StringIds VALUES (?, ?)", (strings[s], s))
        return strings[s]
    pid, tid = 4242, 4242
    gtid = (pid << 24) | tid
    gpid = pid << 24
    db.execute("INSERT INTO TARGET_INFO_GPU VALUES (0, 'NVIDIA H100 80GB HBM3', '0000:19:00.0', 85045870592)")
    for kind, name, s, e, corr, nbytes in tl.kernels:
        if kind == "kernel":
            short = name.split("<")[0].split("(")[0].replace("void ", "")
            db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (?,?,?,?,?,?,?,?,?,132,1,1,384,1,1,168)",
                       (s, e, 0, 1, 7, corr, gpid, sid(name), sid(short)))
        else:
            db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY VALUES (?,?,?,?,?,?,?,?,2,0,1)",
                       (s, e, 0, 1, 7, corr, gpid, nbytes))
    for api, s, e, corr in tl.launches:
        db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (?,?,1,?,?,?,0)",
                   (s, e, gtid, corr, sid(api + "_v7000")))
    for i, (name, s, e) in enumerate(tl.ranges):
        # push/pop ranges (eventType 59); half of them with registered strings (textId), as NVTX allows
        if i % 2:
            db.execute("INSERT INTO NVTX_EVENTS VALUES (?,?,59,NULL,0,0,NULL,?,?,?,0)", (s, e, gtid, gtid, sid(name)))
        else:
            db.execute("INSERT INTO NVTX_EVENTS VALUES (?,?,59,NULL,0,0,?,?,?,NULL,0)", (s, e, name, gtid, gtid))
    db.commit()
    db.close()


if __name__ == "__main__":
    moe_fixtures()
    tp2_fixtures()
