#!/usr/bin/env python3
"""Draws docs/scaling.svg from the measurements of scripts/scaling-measure.sh and prints the
scaling model's tables (markdown) for docs/scaling.md. Standard library only.

    python3 scripts/scaling-plot.py docs/scaling-data [docs/scaling.svg]

The model (docs/scaling.md explains it): a ring allreduce of S bytes over N nodes in
buckets of BUCKET bytes costs  buckets * (N - 1) * a + 2 (N - 1) / N * S * b,  with a (one
message's latency, both directions) and b (seconds per byte) fitted to the measured 2-rank
allreduce times (where 2 (N - 1) / N = 1); it overlaps with the backward pass (2/3 of a
step's compute) except for the last bucket.
"""
import json
import math
import os
import sys

BUCKET = 256 << 10
NODES = [8, 16, 32, 64]
# Gradient bytes (f32 parameters: `resnet info --model M`) and one node's training images/s
# (the README's 2-thread figures, measured on this machine with its other tenants paused).
MODELS = {
    # name: (parameters, images/s of one 2-thread node, global batch of the paper's recipe)
    "resnet20": (269_722, 1706.0, 128),  # README, 2 threads, b128
    "resnet56": (853_018, 549.0, 128),  # README, 2 threads, b128
    "resnet50": (25_557_032, 12.8, 256),  # README, 2 threads, b16; He et al. use 256
}
BACKWARD_SHARE = 2.0 / 3.0


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


def fit(points):
    """t = a + s * b over (bytes, seconds): b the least-squares slope of the messages of 1 MB
    and more (bandwidth-bound), a what the smallest message costs beyond s * b."""
    big = [(s, t) for s, t in points if s >= 1 << 20]
    n = len(big)
    mx = sum(s for s, _ in big) / n
    my = sum(t for _, t in big) / n
    b = sum((s - mx) * (t - my) for s, t in big) / sum((s - mx) ** 2 for s, _ in big)
    s0, t0 = min(points)
    return max(t0 - s0 * b, 0.0), b


def comm_time(params, n, a, b):
    size = 4 * params
    buckets = math.ceil(size / BUCKET)
    total = buckets * (n - 1) * a + 2 * (n - 1) / n * size * b
    last = (n - 1) * a + 2 * (n - 1) / n * min(size, BUCKET) * b
    return total, last


def step_time(compute, params, n, a, b):
    total, last = comm_time(params, n, a, b)
    return compute + max(last, total - BACKWARD_SHARE * compute)


def main():
    data = sys.argv[1]
    svg_path = sys.argv[2] if len(sys.argv) > 2 else "docs/scaling.svg"
    links = {}
    for name, label in [("loopback", "TCP loopback"), ("netns-1gbit", "namespaces 1 Gbit/s"),
                        ("netns-10gbit", "namespaces 10 Gbit/s"), ("netns-25gbit", "namespaces 25 Gbit/s")]:
        path = os.path.join(data, f"allreduce-{name}.jsonl")
        if os.path.exists(path):
            links[label] = [(r["bytes"], r["seconds"]) for r in load_jsonl(path)]
    train = {}
    with open(os.path.join(data, "train.txt")) as f:
        for line in f:
            p = line.split()
            train[int(p[0])] = (float(p[2]), float(p[4]))  # medians; the rounds follow
    fits = {k: fit(v) for k, v in links.items()}
    print("| link | latency term a | bandwidth 1/b |\n| --- | --- | --- |")
    for k, (a, b) in fits.items():
        print(f"| {k} | {a * 1e6:.0f} us | {1 / b / 1e9 * 8:.2f} Gbit/s |")
    # Projections: the latency of the 10 Gbit/s namespaces (the software's, on this machine)
    # and the share of the nominal rate that the link-bound 1 Gbit/s namespaces reached.
    a10 = fits["namespaces 10 Gbit/s"][0]
    eta = (1 / fits["namespaces 1 Gbit/s"][1]) / (1e9 / 8)
    print(f"\nprojection: a = {a10 * 1e6:.0f} us, bandwidth {eta * 100:.0f} % of the nominal rate")
    networks = {f"{g} Gbit/s": (a10, 1 / (g * 1e9 / 8 * eta)) for g in (10, 25, 100)}
    rows = []
    for model, (params, rate, batch) in MODELS.items():
        c = 1.0 / rate
        for net, (a, b) in networks.items():
            strong, weak = [], []
            for n in NODES:
                local = batch / n
                t = step_time(local * c, params, n, a, b)
                strong.append((batch * c) / t / n)
                weak.append(batch * c / step_time(batch * c, params, n, a, b))
            rows.append((model, net, strong, weak, batch))
    print("\n| model | network | " + " | ".join(f"{n} nodes" for n in NODES) + " |")
    print("| --- | --- |" + " --- |" * len(NODES))
    for model, net, strong, weak, batch in rows:
        cells = " | ".join(f"{s * 100:.0f} % / {w * 100:.0f} %" for s, w in zip(strong, weak))
        print(f"| {model} | {net} | {cells} |")
    draw(svg_path, links, train, rows)


def draw(path, links, train, rows):
    W, H = 1200, 420
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>']
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22"]

    def panel(x0, title, xlabel, ylabel):
        out.append(f'<text x="{x0 + 170}" y="20" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<rect x="{x0 + 50}" y="35" width="300" height="300" fill="none" stroke="black"/>')
        out.append(f'<text x="{x0 + 200}" y="370" text-anchor="middle">{xlabel}</text>')
        out.append(f'<text x="{x0 + 12}" y="185" text-anchor="middle" transform="rotate(-90 {x0 + 12} 185)">{ylabel}</text>')

    def log_axes(x0, xs, ys, xfmt, yfmt):
        lx0, lx1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
        ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        fx = lambda v: x0 + 50 + 300 * (math.log10(v) - lx0) / (lx1 - lx0)
        fy = lambda v: 335 - 300 * (math.log10(v) - ly0) / (ly1 - ly0)
        for e in range(lx0, lx1 + 1):
            out.append(f'<text x="{fx(10 ** e):.1f}" y="350" text-anchor="middle">{xfmt(10 ** e)}</text>')
        for e in range(ly0, ly1 + 1):
            out.append(f'<text x="{x0 + 46}" y="{fy(10 ** e) + 4:.1f}" text-anchor="end">{yfmt(10 ** e)}</text>')
            out.append(f'<line x1="{x0 + 50}" x2="{x0 + 350}" y1="{fy(10 ** e):.1f}" y2="{fy(10 ** e):.1f}" stroke="#ddd"/>')
        return fx, fy

    def size(v):
        return f"{v / 1e6:g} MB" if v >= 1e6 else f"{v / 1e3:g} kB"

    # 1: allreduce time against size.
    panel(0, "allreduce, 2 ranks (measured)", "message size", "time per allreduce")
    xs = [s for v in links.values() for s, _ in v]
    ys = [t for v in links.values() for _, t in v]
    fx, fy = log_axes(0, xs, ys, size, lambda v: f"{v * 1e3:g} ms")
    for i, (k, pts) in enumerate(links.items()):
        d = " ".join(f"{fx(s):.1f},{fy(t):.1f}" for s, t in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{colors[i]}" stroke-width="2"/>')
        out.append(f'<text x="60" y="{55 + 15 * i}" fill="{colors[i]}">{k}</text>')
    # 2: images/s.
    panel(400, "resnet20 b128 training (measured)", "threads or ranks", "images/s")
    top = max(max(v) for v in train.values()) * 1.15
    for j, n in enumerate(sorted(train)):
        for k, v in enumerate(train[n]):
            h = 300 * v / top
            x = 400 + 50 + 20 + j * 95 + k * 38
            out.append(f'<rect x="{x}" y="{335 - h:.1f}" width="34" height="{h:.1f}" fill="{colors[k]}"/>')
            out.append(f'<text x="{x + 17}" y="{330 - h:.1f}" text-anchor="middle" font-size="10">{v:.0f}</text>')
        out.append(f'<text x="{400 + 50 + 57 + j * 95}" y="350" text-anchor="middle">{n}</text>')
    out.append(f'<text x="460" y="55" fill="{colors[0]}">1 process, N threads</text>')
    out.append(f'<text x="460" y="70" fill="{colors[1]}">N ranks of 1 thread</text>')
    # 3: projected efficiency, fixed global batch.
    panel(800, "projected efficiency, paper's global batch", "nodes", "efficiency")
    fxn = lambda n: 800 + 50 + 300 * (math.log2(n) - 3) / 3
    fye = lambda e: 335 - 300 * e
    for n in NODES:
        out.append(f'<text x="{fxn(n):.1f}" y="350" text-anchor="middle">{n}</text>')
    for e in [0, 0.25, 0.5, 0.75, 1.0]:
        out.append(f'<text x="846" y="{fye(e) + 4:.1f}" text-anchor="end">{e * 100:.0f} %</text>')
        out.append(f'<line x1="850" x2="1150" y1="{fye(e):.1f}" y2="{fye(e):.1f}" stroke="#ddd"/>')
    dash = {"10 Gbit/s": "2,3", "25 Gbit/s": "6,3", "100 Gbit/s": ""}
    models = []
    for model, net, strong, weak, batch in rows:
        if model not in models:
            models.append(model)
        c = colors[models.index(model)]
        d = " ".join(f"{fxn(n):.1f},{fye(s):.1f}" for n, s in zip(NODES, strong))
        out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2" stroke-dasharray="{dash[net]}"/>')
    for i, m in enumerate(models):
        out.append(f'<text x="860" y="{250 + 15 * i}" fill="{colors[i]}">{m}</text>')
    for i, (net, da) in enumerate(dash.items()):
        y = 250 + 15 * i
        out.append(f'<line x1="940" x2="970" y1="{y - 4}" y2="{y - 4}" stroke="black" stroke-dasharray="{da}"/>')
        out.append(f'<text x="975" y="{y}">{net}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
