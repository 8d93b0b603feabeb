#!/usr/bin/env bash
# Inference of every zoo model next to ONNX Runtime and OpenVINO f32, at batch 1 and at its
# large batch (128 for the CIFAR nets, 8 for the ImageNet ones), 2 threads, in one sitting:
# ROUNDS rounds, each running every engine once per case. The ONNX graphs come from
# scripts/zoo_onnx.py (checked against the engine when written) in WORK_DIR/zoo-onnx; the
# peers run through the harness's bench_ort.py with WORK_DIR's venv (see nativebench.sh).
#
# usage: scripts/zoobench.sh WORK_DIR [MODEL ...]   (default: every model in WORK_DIR/zoo-onnx)
# env:   ROUNDS (2), RESNET (target/release/resnet), RESNET_SHARED (../shared beside the repo)
# Results: WORK_DIR/zoo-DATE.jsonl; prints medians and ratios (scripts/nativebench_table.py).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { sed -n '2,10p' "$0"; exit 2; }
W="$(cd "$1" && pwd)" || exit 2
shift
shared="${RESNET_SHARED:-$repo/../shared}"
bin="${RESNET:-$repo/target/release/resnet}"
ort_py="$W/venv/bin/python"; [ -x "$ort_py" ] || ort_py="$W/venv-ort/bin/python"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=($(cd "$W/zoo-onnx" && ls *.onnx | sed 's/\.onnx$//'))
out="$W/zoo-$(date +%Y%m%d-%H%M%S).jsonl"
for round in $(seq 1 "${ROUNDS:-2}"); do
    echo "round $round $(date +%T)" >&2
    for m in "${models[@]}"; do
        size=$("$bin" info --model "$m" --json | python3 -c 'import sys, json; print(json.load(sys.stdin)["config"]["input_size"])')
        large=8; [ "$size" -le 64 ] && large=128
        for b in 1 "$large"; do
            reps=20; [ "$b" -gt 1 ] && reps=4
            echo "{\"engine\":\"ours\",\"r\":$("$bin" bench --model "$m" --batch "$b" --threads 2 --reps $reps --json)}" >> "$out"
        done
        for engine in ort openvino; do
            "$ort_py" "$shared/bench/native/bench_ort.py" "$W/zoo-onnx" --engine "$engine" --threads 2 \
                --cases "$m:1,$m:$large" --runs 6 --warmup 1 2>&1 | grep -v "^#" | sed "s/^/PEER-$engine /" >> "$out"
        done
    done
done
echo "results: $out" >&2
python3 "$repo/scripts/nativebench_table.py" "$out"
