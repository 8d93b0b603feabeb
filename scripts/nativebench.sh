#!/usr/bin/env bash
# Native benchmark of the engine next to ONNX Runtime and OpenVINO f32 (inference) and
# PyTorch / TensorFlow (training) in one sitting: ROUNDS rounds, each running every engine once, so that the
# host's drift hits all of them alike. Optionally a second build of ours (BASE) for a
# before/after comparison. Needs the peer harness's venvs in WORK_DIR (its setup.sh):
# venv (or venv-ort) with onnxruntime and openvino, venv-torch, venv-tf (each skipped when
# missing) and the ONNX models of its make_onnx.py in WORK_DIR/onnx.
#
# usage: scripts/nativebench.sh WORK_DIR
# env:   ROUNDS (3), RESNET (target/release/resnet), BASE (another resnet binary, optional),
#        RESNET_SHARED (../shared beside the repo)
# Results: WORK_DIR/native-DATE.jsonl; prints medians over rounds (scripts/nativebench_table.py).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { sed -n '2,12p' "$0"; exit 2; }
W="$(cd "$1" && pwd)" || exit 2
shared="${RESNET_SHARED:-$repo/../shared}"
bench="$shared/bench/native"
new="${RESNET:-$repo/target/release/resnet}"
base="${BASE:-}"
out="$W/native-$(date +%Y%m%d-%H%M%S).jsonl"
ort_py="$W/venv/bin/python"; [ -x "$ort_py" ] || ort_py="$W/venv-ort/bin/python"
ours() {
    local tag=$1 bin=$2; shift 2
    echo "{\"engine\":\"$tag\",\"r\":$("$bin" bench "$@" --json)}" >> "$out"
}
for round in $(seq 1 "${ROUNDS:-3}"); do
    echo "round $round $(date +%T)" >&2
    for pair in "ours:$new" ${base:+"base:$base"}; do
        tag=${pair%%:*}; bin=${pair#*:}
        ours "$tag" "$bin" --model resnet20 --batch 128 --threads 2 --reps 10
        ours "$tag" "$bin" --model resnet20 --batch 128 --threads 2 --reps 5 --train
        ours "$tag" "$bin" --model resnet18 --batch 1 --threads 2 --reps 10
        ours "$tag" "$bin" --model resnet50 --batch 1 --threads 2 --reps 10
        ours "$tag" "$bin" --model resnet20 --batch 1 --threads 2 --reps 50
        ours "$tag" "$bin" --model resnet50 --batch 8 --threads 2 --reps 10
    done
    ours ours "$new" --model resnet20 --batch 128 --threads 1 --reps 6
    ours ours "$new" --model resnet20 --batch 128 --threads 1 --reps 3 --train
    ours ours "$new" --model resnet50 --batch 1 --threads 1 --reps 4
    if [ -x "$ort_py" ]; then
        for engine in ort openvino; do
            "$ort_py" "$bench/bench_ort.py" "$W/onnx" --engine "$engine" --threads 2 \
                --cases resnet20:128,resnet20:1,resnet18:1,resnet50:1,resnet50:8 --runs 10 --warmup 2 2>&1 \
                | grep -v "^#" | sed "s/^/PEER-$engine /" >> "$out"
        done
    fi
    if [ -x "$W/venv-torch/bin/python" ]; then
        for layout in --channels-last ""; do
            "$W/venv-torch/bin/python" "$bench/train_torch.py" --model resnet20 --batch 128 --threads 2 \
                --steps 10 $layout 2>&1 | tail -1 | sed "s/^/TORCH${layout:+-CL} /" >> "$out"
        done
    fi
    if [ -x "$W/venv-tf/bin/python" ]; then
        "$W/venv-tf/bin/python" "$bench/train_tf.py" --model resnet20 --batch 128 --intra 2 --inter 1 \
            --steps 10 2>&1 | tail -1 | sed 's/^/TF /' >> "$out"
    fi
done
echo "results: $out" >&2
python3 "$repo/scripts/nativebench_table.py" "$out"
