#!/usr/bin/env python3
"""Checks our ImageNet ResNet forward pass against ONNX Runtime on the same weights.

The engine writes a random zoo model (non-trivial BN statistics) as safetensors and its
logits on a random input (core/examples/forward_dump.rs); this script rebuilds the
torchvision topology as an ONNX graph from those tensors by name, runs ONNX Runtime on
the same input and prints the largest difference relative to the largest logit.

usage: check_onnx.py [resnet18 resnet50 ...] (needs numpy, onnx, onnxruntime; run from
the repository root; builds and runs the example through cargo)
"""
import json
import struct
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(body[b:e], dtype=np.float32).reshape(info["shape"])
    return out


class Graph:
    def __init__(self, w):
        self.w, self.nodes, self.inits, self.k = w, [], [], 0

    def name(self, p):
        self.k += 1
        return f"{p}_{self.k}"

    def init(self, key):
        self.inits.append(numpy_helper.from_array(self.w[key], key))
        return key

    def conv(self, x, key, stride, pad):
        out = self.name("conv")
        k = self.w[key + ".weight"].shape[2]
        self.nodes.append(helper.make_node("Conv", [x, self.init(key + ".weight")], [out],
                                           kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4))
        return out

    def bn(self, x, key):
        out = self.name("bn")
        ins = [x] + [self.init(f"{key}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        self.nodes.append(helper.make_node("BatchNormalization", ins, [out], epsilon=1e-5))
        return out

    def op(self, kind, ins, **kw):
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, ins, [out], **kw))
        return out

    def option_a(self, x, stride, cin, cout):
        """He et al.'s option-A shortcut: every `stride`-th pixel, zero channels padded on
        both sides."""
        k = self.k = self.k + 1
        consts = {f"sa_starts_{k}": [0, 0], f"sa_ends_{k}": [2**31 - 1] * 2, f"sa_axes_{k}": [2, 3],
                  f"sa_steps_{k}": [stride] * 2}
        for name, v in consts.items():
            self.inits.append(numpy_helper.from_array(np.array(v, dtype=np.int64), name))
        y = self.op("Slice", [x] + list(consts))
        pad = (cout - cin) // 2
        pads = f"sa_pads_{k}"
        self.inits.append(numpy_helper.from_array(np.array([0, pad, 0, 0, 0, cout - cin - pad, 0, 0], dtype=np.int64), pads))
        return self.op("Pad", [y, pads], mode="constant")


def build(w, config=None):
    """The ONNX graph of a zoo model from its tensors: torchvision's ImageNet topology by
    default; with `config` (`resnet info --json`'s), CIFAR stems, option-A shortcuts and
    plain nets too."""
    config = config or {"stem": "ImageNet", "residual": True, "shortcut": "B", "input_size": 224}
    cifar = config["stem"] == "Cifar"
    g = Graph(w)
    if cifar:
        x = g.op("Relu", [g.bn(g.conv("input", "conv1", 1, 1), "bn1")])
    else:
        x = g.op("Relu", [g.bn(g.conv("input", "conv1", 2, 3), "bn1")])
        x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    bottleneck = "layer1.0.conv3.weight" in w
    stage = 1
    while f"layer{stage}.0.conv1.weight" in w:
        b = 0
        while f"layer{stage}.{b}.conv1.weight" in w:
            p = f"layer{stage}.{b}"
            s = 2 if stage > 1 and b == 0 else 1
            inp = x
            if bottleneck:  # torchvision v1.5: stride on the 3x3
                y = g.op("Relu", [g.bn(g.conv(inp, p + ".conv1", 1, 0), p + ".bn1")])
                y = g.op("Relu", [g.bn(g.conv(y, p + ".conv2", s, 1), p + ".bn2")])
                y = g.bn(g.conv(y, p + ".conv3", 1, 0), p + ".bn3")
            else:
                y = g.op("Relu", [g.bn(g.conv(inp, p + ".conv1", s, 1), p + ".bn1")])
                y = g.bn(g.conv(y, p + ".conv2", 1, 1), p + ".bn2")
            if not config["residual"]:
                x = g.op("Relu", [y])
            else:
                sc = inp
                if p + ".downsample.0.weight" in w:
                    sc = g.bn(g.conv(inp, p + ".downsample.0", s, 0), p + ".downsample.1")
                elif cifar and (s > 1 or w[p + ".conv1.weight"].shape[0] != w[p + ".conv1.weight"].shape[1]):
                    sc = g.option_a(inp, s, w[p + ".conv1.weight"].shape[1], w[p + ".conv2.weight"].shape[0])
                x = g.op("Relu", [g.op("Add", [y, sc])])
            b += 1
        stage += 1
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    x = g.op("Gemm", [x, g.init("fc.weight"), g.init("fc.bias")], transB=1)
    classes = w["fc.weight"].shape[0]
    size = config["input_size"]
    graph = helper.make_graph(g.nodes, "resnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", classes])], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main():
    models = sys.argv[1:] or ["resnet18", "resnet50"]
    n = 2
    rng = np.random.default_rng(0)
    for model in models:
        with tempfile.TemporaryDirectory() as d:
            x = rng.standard_normal((n, 3, 224, 224)).astype(np.float32)
            x.tofile(f"{d}/x.f32")
            subprocess.run(["cargo", "run", "--release", "-q", "-p", "resnet-core", "--example", "forward_dump", "--",
                            model, "7", f"{d}/w.safetensors", f"{d}/x.f32", str(n), f"{d}/y.f32"], check=True)
            ours = np.fromfile(f"{d}/y.f32", dtype=np.float32).reshape(n, -1)
            w = read_safetensors(f"{d}/w.safetensors")
            sess = ort.InferenceSession(build(w).SerializeToString(), providers=["CPUExecutionProvider"])
            theirs = sess.run(None, {"input": x})[0]
            rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
            same_top1 = (ours.argmax(1) == theirs.argmax(1)).all()
            print(f"{model}: max |ours - onnxruntime| / max |logit| = {rel:.2e}, top-1 equal: {same_top1}, "
                  f"onnxruntime {ort.__version__}")
            if not rel <= 1e-4 or not same_top1:
                sys.exit(1)


if __name__ == "__main__":
    main()
