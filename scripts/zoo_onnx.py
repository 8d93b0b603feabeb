#!/usr/bin/env python3
"""Writes ONNX graphs of zoo models for the peer benchmarks, each checked against the engine.

For every model: the engine writes a random instance (core/examples/forward_dump.rs) and
its logits on a random input; this script builds the same network as an ONNX graph from
those tensors (scripts/check_onnx.py's builder: ImageNet and CIFAR stems, option-A and
projection shortcuts, plain nets), checks that ONNX Runtime's logits agree within 1e-4
of the largest logit, and writes OUT_DIR/MODEL.onnx with the analytic multiply-adds per
image in its metadata (`macs_per_image`, from `resnet info --json`), which the harness's
bench_ort.py reads.

usage: zoo_onnx.py OUT_DIR MODEL... (needs numpy, onnx, onnxruntime; run from the
repository root; builds and runs the engine through cargo)
"""

import json
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from check_onnx import build, read_safetensors


def engine(*args):
    return subprocess.run(["cargo", "run", "--release", "-q", *args], check=True, capture_output=True, text=True).stdout


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out_dir, models = sys.argv[1], sys.argv[2:]
    rng = np.random.default_rng(0)
    n = 2
    for model in models:
        info = json.loads(engine("--", "info", "--model", model, "--json"))
        config = info["config"]
        size = config["input_size"]
        with tempfile.TemporaryDirectory() as d:
            x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
            x.tofile(f"{d}/x.f32")
            engine("-p", "resnet-core", "--example", "forward_dump", "--",
                   model, "7", f"{d}/w.safetensors", f"{d}/x.f32", str(n), f"{d}/y.f32")
            ours = np.fromfile(f"{d}/y.f32", dtype=np.float32).reshape(n, -1)
            graph = build(read_safetensors(f"{d}/w.safetensors"), config)
        onnx.helper.set_model_props(graph, {"macs_per_image": str(info["total_macs"])})
        sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        theirs = sess.run(None, {"input": x})[0]
        rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
        print(f"{model}: max |ours - onnxruntime| / max |logit| = {rel:.2e}", flush=True)
        # `not rel <= ...` so that a NaN (a non-finite logit on either side) fails too.
        if not rel <= 1e-4 or not (ours.argmax(1) == theirs.argmax(1)).all():
            sys.exit(f"{model}: the ONNX graph does not compute what the engine does")
        onnx.save(graph, f"{out_dir}/{model}.onnx")


if __name__ == "__main__":
    main()
