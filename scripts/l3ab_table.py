#!/usr/bin/env python3
"""Medians of `examples/plan_profile` outputs sorted by scripts/l3ab.sh: per step and for
the whole call, for build A and B, with the threads on one L3 ("near") and on two ("far").

usage: python3 scripts/l3ab_table.py OUT_DIR [--steps]   (whole calls only without --steps)
"""
import collections
import glob
import re
import statistics
import sys

STEP = re.compile(r"\s*\d+ (\S+).*?([\d.]+) ms$")
WHOLE = re.compile(r"whole call median ([\d.]+)")


def load(pattern):
    times, runs = collections.defaultdict(list), 0
    for path in glob.glob(pattern):
        runs += 1
        for line in open(path):
            if m := STEP.match(line):
                times[m[1]].append(float(m[2]))
            if m := WHOLE.search(line):
                times["whole call"].append(float(m[1]))
    return times, runs


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    groups = ["near_A", "near_B", "far_A", "far_B"]
    data = {g: load(f"{sys.argv[1]}/{g}_*.txt") for g in groups}
    print("runs: " + ", ".join(f"{g} {data[g][1]}" for g in groups))
    names = []
    for g in groups:
        names += [k for k in data[g][0] if k not in names]
    if "--steps" not in sys.argv:
        names = [n for n in names if n == "whole call"]
    print(f"{'ms':28s}" + "".join(f"{g:>9s}" for g in groups))
    for name in names:
        cells = []
        for g in groups:
            values = data[g][0].get(name)
            cells.append(f"{statistics.median(values):9.3f}" if values else f"{'-':>9s}")
        print(f"{name:28s}" + "".join(cells))


if __name__ == "__main__":
    main()
