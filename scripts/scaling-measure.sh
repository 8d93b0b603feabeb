#!/usr/bin/env bash
# The measurements of docs/scaling.md, into OUT (default docs/scaling-data): allreduce time
# against size over TCP loopback and across network namespaces at 1, 10 and 25 Gbit/s
# (scripts/mpi-netns.sh), and training images/s of 1, 2 and 4 ranks of one thread against
# one process with as many threads. Needs root, Open MPI and a release build with
# --features mpi (RESNET=path to override). Every run is bounded by `timeout`. Then
# `python3 scripts/scaling-plot.py OUT` draws docs/scaling.svg and prints the model's table.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/scaling-data}
RESNET=${RESNET:-${CARGO_TARGET_DIR:-target}/release/resnet}
ITERS=${ITERS:-40}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
BENCH=(mpi-bench --min-bytes 4096 --max-bytes 16777216 --seconds 0.3 --json)

echo "allreduce, 2 ranks, TCP over loopback" >&2
timeout -k 10 300 mpirun -np 2 --bind-to none --mca btl tcp,self --mca btl_tcp_if_include lo \
  --mca oob_tcp_if_include lo "$RESNET" "${BENCH[@]}" > "$OUT/allreduce-loopback.jsonl"
for rate in 1gbit 10gbit 25gbit; do
  echo "allreduce, 2 namespaces at $rate" >&2
  scripts/mpi-netns.sh -n 2 -r $rate -t 300 -b "$RESNET" -- "${BENCH[@]}" > "$OUT/allreduce-netns-$rate.jsonl"
done

# Training throughput on a synthetic CIFAR-format set (the pixels do not change the speed).
DATA="$OUT/tmp-data/cifar-10-batches-bin"
mkdir -p "$DATA"
python3 - "$DATA" <<'EOF'
import os, random, sys
d = sys.argv[1]
r = random.Random(1)
for name, n in [(f"data_batch_{k}.bin", 2000) for k in range(1, 6)] + [("test_batch.bin", 500)]:
    with open(os.path.join(d, name), "wb") as f:
        for i in range(n):
            f.write(bytes([i % 10]) + r.randbytes(3072))
EOF
rate() { sed -n 's/.*, \([0-9]*\) train images\/s.*/\1/p' | tail -1; }
median() { tr ' ' '\n' | sort -n | sed -n 2p; }
TRAIN=(train --model resnet20 --data "$DATA" --iters "$ITERS" --batch 128 --quiet --force)
: > "$OUT/train.txt"
# Three rounds, the two kinds interleaved (the machine is shared: medians of 3).
for n in 1 2 4; do
  echo "training, 1 process of $n threads; $n ranks of 1 thread" >&2
  ts="" rs=""
  for round in 1 2 3; do
    ts="$ts $(timeout -k 10 600 "$RESNET" "${TRAIN[@]}" --threads $n --out "$OUT/tmp-run" 2>&1 | rate)"
    rs="$rs $(timeout -k 10 600 mpirun -np $n --oversubscribe --bind-to none "$RESNET" "${TRAIN[@]}" --threads 1 \
      --out "$OUT/tmp-run" 2>&1 | rate)"
  done
  echo "$n threads $(echo $ts | median) ranks $(echo $rs | median) rounds:$ts /$rs" | tee -a "$OUT/train.txt" >&2
done
rm -rf "$OUT/tmp-data" "$OUT/tmp-run"
