#!/usr/bin/env python3
"""PyTorch training steps under CPU bf16 autocast, the peer of `resnet bench --train
--precision bf16`: the model definitions and the step of the shared harness
(`$RESNET_SHARED/bench/native/train_torch.py`: same models, SGD, random batch), with the
forward pass and loss under `torch.autocast("cpu", dtype=torch.bfloat16)` (f32 master
weights and optimizer, as autocast keeps them).

usage: torch_autocast_train.py --model resnet50 --batch 16 [--threads 2] [--steps 6]
                               [--warmup 2] [--channels-last]
Prints one JSON line with median_step_ms and images_per_s.
"""
import argparse
import importlib.util
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

shared = os.environ.get("RESNET_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
spec = importlib.util.spec_from_file_location("train_torch", os.path.join(shared, "bench", "native", "train_torch.py"))
harness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harness)

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="resnet20")
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=6)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--channels-last", action="store_true")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.set_num_interop_threads(1)
torch.manual_seed(0)
if a.model == "resnet50":
    model, hw, classes = harness.ResNet50(), 224, 1000
else:
    model, hw, classes = harness.CifarResNet(int(a.model[6:])), 32, 10
x = torch.randn(a.batch, 3, hw, hw)
y = torch.randint(0, classes, (a.batch,))
if a.channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
model.train()


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


for _ in range(a.warmup):
    step()
times = []
for _ in range(a.steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(json.dumps({"framework": f"torch {torch.__version__} bf16 autocast" + (" channels_last" if a.channels_last else ""),
                  "model": a.model, "batch": a.batch, "threads": a.threads, "steps": len(times),
                  "median_step_ms": med * 1e3, "images_per_s": a.batch / med}))
