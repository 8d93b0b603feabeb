#!/usr/bin/env python3
"""Per-layer times of this engine next to OpenVINO's on the same ResNet, in one sitting.

Runs, ROUNDS times in alternation, our `plan_profile` example (every step of an inference
plan timed in place) and OpenVINO f32 with its per-node counters (PERF_COUNT) on the
peer harness's ONNX graph of the same model, then prints each convolution's best-of-rounds
median for both, side by side, and the totals by kind of layer (stem, each kernel size and
stride, pooling, head). The two lists are matched by order, which is the same in both for the
torchvision ResNets (conv1, conv2, downsample, conv3 in a block); the script checks that
they have as many convolutions.

usage: scripts/layers_vs_openvino.py PYTHON_WITH_OPENVINO ONNX_DIR MODEL BATCH
env:   ROUNDS (2), REPS (30 at batch 1, else 6), THREADS (2),
       PROFILE (target/release/examples/plan_profile: cargo build --release -p resnet-core
       --example plan_profile)
"""
import json
import os
import subprocess
import sys
from pathlib import Path

OV_PROBE = r"""
import json, sys, time
import numpy as np, openvino as ov
path, batch, reps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
core = ov.Core()
model = core.read_model(path)
model.reshape([batch, 3, 224, 224])
compiled = core.compile_model(model, "CPU", {
    "PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads,
    "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
request = compiled.create_infer_request()
x = np.random.default_rng(1).random((batch, 3, 224, 224), dtype=np.float32)
nodes, whole = {}, []
for rep in range(reps + 3):
    t = time.perf_counter()
    request.infer({0: x})
    if rep < 3:
        continue
    whole.append(time.perf_counter() - t)
    for p in request.profiling_info:
        if p.status == p.Status.EXECUTED:
            entry = nodes.setdefault(p.node_name, {"type": p.node_type, "exec": p.exec_type, "ms": []})
            entry["ms"].append(p.real_time.total_seconds() * 1e3)
print(json.dumps({"whole_ms": sorted(whole)[len(whole) // 2] * 1e3, "nodes": list(nodes.values())}))
"""


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def ours(profile, model, batch, reps, threads):
    out = subprocess.run([profile, model, str(batch), str(reps), "auto", threads], check=True,
                         capture_output=True, text=True).stdout
    steps = []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit() and parts[-1] == "ms":
            algo, shape = (parts[2], parts[3]) if len(parts) == 6 else ("", "")
            steps.append((parts[1], algo, shape, float(parts[-2])))
        elif line.startswith("sum of step medians"):
            whole = float(line.split()[-2])
    return steps, whole


def openvino(python, onnx, batch, reps, threads):
    out = subprocess.run([python, "-c", OV_PROBE, str(onnx), str(batch), str(reps), threads],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def kind(name, shape):
    if name == "conv1":
        return f"stem {shape} (+ OV's reorder)"
    return shape.replace("/", " stride ")


def main():
    if len(sys.argv) != 5:
        print(__doc__.strip().split("\n\n")[-1])
        sys.exit(2)
    python, onnx_dir, model, batch = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    rounds = int(os.environ.get("ROUNDS", "2"))
    reps = int(os.environ.get("REPS", "30" if batch == 1 else "6"))
    threads = os.environ.get("THREADS", "2")
    repo = Path(__file__).resolve().parent.parent
    profile = os.environ.get("PROFILE", str(repo / "target/release/examples/plan_profile"))
    onnx = onnx_dir / f"{model}.onnx"
    our_rounds, ov_rounds = [], []
    for r in range(rounds):
        print(f"round {r + 1}", file=sys.stderr)
        our_rounds.append(ours(profile, model, batch, reps, threads))
        ov_rounds.append(openvino(python, onnx, batch, reps, threads))
    # Best of the rounds' medians, per step.
    steps = [(name, algo, shape, min(rd[0][i][3] for rd in our_rounds))
             for i, (name, algo, shape, _) in enumerate(our_rounds[0][0])]
    ov_nodes = [[n for n in rd["nodes"]] for rd in ov_rounds]
    ov_ms = [min(median(rd[i]["ms"]) for rd in ov_nodes) for i in range(len(ov_nodes[0]))]
    ov_types = [n["type"] for n in ov_nodes[0]]
    ov_conv = [ms for ms, t in zip(ov_ms, ov_types) if t == "Convolution"]
    ov_reorder_in = ov_ms[0] if ov_types[0] == "Reorder" else 0.0
    ov_head = sum(ms for ms, t in zip(ov_ms, ov_types) if t in ("ReduceMean", "FullyConnected", "MatMul"))
    ov_pool = sum(ms for ms, t in zip(ov_ms, ov_types) if t == "MaxPool")
    convs = [s for s in steps if s[0] not in ("maxpool", "avgpool+fc")]
    if len(convs) != len(ov_conv):
        sys.exit(f"{len(convs)} convolutions here, {len(ov_conv)} in OpenVINO's graph: cannot match them by order")
    totals = {}
    print(f"{model} batch {batch}, {threads} threads, best of {rounds} rounds' medians (ms)")
    print(f"{'layer':28} {'shape':6} {'ours':>8} {'algo':6} {'OpenVINO':>9} {'ours/OV':>8}")
    for (name, algo, shape, ms), ov_c in zip(convs, ov_conv):
        ov_t = ov_c + (ov_reorder_in if name == "conv1" else 0.0)
        k = kind(name, shape)
        totals.setdefault(k, [0.0, 0.0])
        totals[k][0] += ms
        totals[k][1] += ov_t
        print(f"{name:28} {shape:6} {ms:8.3f} {algo:6} {ov_t:9.3f} {ms / ov_t:8.2f}")
    ours_other = {s[0]: s[3] for s in steps if s[0] in ("maxpool", "avgpool+fc")}
    totals["max pool"] = [ours_other.get("maxpool", 0.0), ov_pool]
    totals["head (average pool + fc)"] = [ours_other.get("avgpool+fc", 0.0), ov_head]
    print(f"\n{'kind':28} {'ours':>8} {'OpenVINO':>9} {'ours/OV':>8}")
    for k, (a, b) in totals.items():
        print(f"{k:28} {a:8.3f} {b:9.3f} {a / b if b else float('nan'):8.2f}")
    sa, sb = sum(a for a, _ in totals.values()), sum(b for _, b in totals.values())
    print(f"{'sum of layers':28} {sa:8.3f} {sb:9.3f} {sa / sb:8.2f}")
    wa = median([rd[1] for rd in our_rounds])
    wb = median([rd["whole_ms"] for rd in ov_rounds])
    print(f"{'whole call (median)':28} {wa:8.3f} {wb:9.3f} {wa / wb:8.2f}")


if __name__ == "__main__":
    main()
