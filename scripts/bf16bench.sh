#!/bin/bash
# Training steps in f32 and bf16, ours against PyTorch, rounds interleaved in one sitting:
# `resnet bench --train` with --precision f32 and bf16, the shared harness's train_torch.py
# (f32, NCHW and channels_last) and scripts/torch_autocast_train.py (bf16 autocast, NCHW
# and channels_last). Prints the median step of each and the ratios.
# BASE=another resnet binary adds its f32 step (a before/after in the same sitting), and
# BASE_BF16=1 its bf16 step too.
# usage: ROUNDS=3 CASES="resnet50:16 resnet20:128" [BASE=...] scripts/bf16bench.sh [PYTHON_WITH_TORCH]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${1:-python3}
shared=${RESNET_SHARED:-$repo/../shared}
bin=$repo/target/release/resnet
out=$(mktemp)
for round in $(seq 1 "${ROUNDS:-3}"); do
  for c in ${CASES:-resnet50:16 resnet20:128}; do
    m=${c%%:*}; b=${c#*:}
    if [ -n "${BASE:-}" ]; then
      for p in f32 ${BASE_BF16:+bf16}; do
        # f32 without the option, so that builds from before it can be the base.
        precision=(); [ "$p" = bf16 ] && precision=(--precision bf16)
        ms=$("$BASE" bench --model "$m" --batch "$b" --threads 2 --reps "${REPS:-5}" --train "${precision[@]}" --json |
          python3 -c 'import sys,json; print(json.load(sys.stdin)["median_ms"])')
        echo "$m $b base-$p $ms" >> "$out"
      done
    fi
    for p in f32 bf16; do
      ms=$("$bin" bench --model "$m" --batch "$b" --threads 2 --reps "${REPS:-5}" --train --precision $p --json |
        python3 -c 'import sys,json; print(json.load(sys.stdin)["median_ms"])')
      echo "$m $b ours-$p $ms" >> "$out"
    done
    for cl in "" --channels-last; do
      ms=$("$py" "$shared/bench/native/train_torch.py" --model "$m" --batch "$b" --threads 2 --steps "${STEPS:-6}" $cl |
        tail -1 | python3 -c 'import sys,json; print(json.load(sys.stdin)["median_step_ms"])')
      echo "$m $b torch-f32${cl:+-cl} $ms" >> "$out"
      ms=$("$py" "$repo/scripts/torch_autocast_train.py" --model "$m" --batch "$b" --threads 2 --steps "${STEPS:-6}" $cl |
        tail -1 | python3 -c 'import sys,json; print(json.load(sys.stdin)["median_step_ms"])')
      echo "$m $b torch-bf16${cl:+-cl} $ms" >> "$out"
    done
  done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m, b, who, ms = line.split()
    runs[(m, b, who)].append(float(ms))
for m, b in sorted({k[:2] for k in runs}):
    med = {who: statistics.median(v) for (mm, bb, who), v in runs.items() if (mm, bb) == (m, b)}
    torch32 = min(v for w, v in med.items() if w.startswith("torch-f32"))
    torch16 = min(v for w, v in med.items() if w.startswith("torch-bf16"))
    print(f"{m} b{b}: " + ", ".join(f"{w} {v:.1f} ms" for w, v in sorted(med.items())))
    print(f"  ours bf16 / ours f32 {med['ours-f32'] / med['ours-bf16']:.2f}x; ours f32 / torch f32 best {torch32 / med['ours-f32']:.2f}x;"
          f" ours bf16 / torch bf16 best {torch16 / med['ours-bf16']:.2f}x; torch bf16 / torch f32 {torch32 / torch16:.2f}x")
    if "base-f32" in med:
        print(f"  base f32 / torch f32 best {torch32 / med['base-f32']:.2f}x; ours f32 / base f32 {med['base-f32'] / med['ours-f32']:.2f}x")
    if "base-bf16" in med:
        print(f"  base bf16 / torch bf16 best {torch16 / med['base-bf16']:.2f}x; ours bf16 / base bf16 {med['base-bf16'] / med['ours-bf16']:.2f}x")
PY
rm -f "$out"
