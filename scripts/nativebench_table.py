#!/usr/bin/env python3
"""Medians over rounds of scripts/nativebench.sh results (JSON lines): one row per engine,
model, batch, threads and pass, with the minimum and the rounds counted; then, for each
inference workload, ours over the best peer (the faster of ONNX Runtime and OpenVINO).

usage: scripts/nativebench_table.py RESULTS.jsonl [MORE.jsonl ...]
"""
import collections
import json
import re
import statistics
import sys

rows = collections.defaultdict(list)
for path in sys.argv[1:]:
    for line in open(path):
        if line.startswith('{"engine"'):
            d = json.loads(line)
            r = d["r"]
            key = (d["engine"], r["model"], r["batch"], r["threads"], "train" if r["train"] else "infer")
            rows[key].append(r["median_ms"])
        elif line.startswith(("ORT ", "PEER-")):
            engine = "ort" if line.startswith("ORT ") else line.split(" ", 1)[0][len("PEER-"):]
            m = re.search(r"((?:resnet|plain)\d+)\s+b=(\d+)\s+t=(\d+) median\s+([\d.]+) ms", line)
            if m:
                key = (engine, m.group(1), int(m.group(2)), int(m.group(3)), "infer")
                rows[key].append(float(m.group(4)))
        elif " {" in line:
            tag, payload = line.split(" ", 1)
            try:
                d = json.loads(payload)
            except json.JSONDecodeError:
                continue
            key = (tag.lower(), d["model"], d["batch"], d.get("threads", d.get("intra")), "train")
            rows[key].append(d["median_step_ms"])

for key, times in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][4], kv[0][3], kv[0][0])):
    engine, model, batch, threads, mode = key
    med = statistics.median(times)
    print(
        f"{engine:9s} {model:9s} b{batch:<4d} t{threads} {mode:5s} rounds {len(times):2d}  "
        f"median {med:8.2f} ms (min {min(times):8.2f})  {batch * 1000 / med:8.1f} img/s"
    )

print()
medians = {k: statistics.median(v) for k, v in rows.items()}
for (engine, model, batch, threads, mode), ms in sorted(medians.items()):
    if engine != "ours" or mode != "infer":
        continue
    peers = {e: medians[(e, model, batch, threads, mode)] for e in ("ort", "openvino") if (e, model, batch, threads, mode) in medians}
    if peers:
        best = min(peers, key=peers.get)
        print(f"{model:9s} b{batch:<4d} t{threads} inference: ours / best peer ({best}) = {peers[best] / ms:.2f}x")
