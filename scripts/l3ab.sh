#!/usr/bin/env bash
# Two builds' runs sorted by whether the two threads shared an L3: N pairs of runs, A then
# B, each between two `examples/cache_pingpong` measures; a run whose two round trips are
# both under NEAR_NS (120) counts as "near", both over FAR_NS (250) as "far", others are
# dropped. On a VM whose vCPUs the hypervisor moves between the CCDs of an EPYC host, the
# engine's two-thread times fall into two groups by this measure (ResNet-50 b1 about
# 30.5 against 34.5 ms), which benchmarks of a few rounds cannot tell from a change.
#
# usage: scripts/l3ab.sh OUT_DIR N "COMMAND_A" "COMMAND_B"
#   e.g. scripts/l3ab.sh /tmp/ab 40 "OLD/plan_profile resnet50 1 20" "NEW/plan_profile resnet50 1 20"
# Results: OUT_DIR/{near,far}_{A,B}_I.txt, each a command's output; then
#   python3 scripts/l3ab_table.py OUT_DIR
# prints the medians of `examples/plan_profile`'s per-step and whole-call times by group.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -eq 4 ] || { sed -n '2,13p' "$0"; exit 2; }
out=$1 n=$2 a=$3 b=$4
mkdir -p "$out"
cargo build --release -q -p resnet-core --example cache_pingpong --manifest-path "$repo/Cargo.toml" || exit 1
pingpong="$repo/target/release/examples/cache_pingpong"
trip() { "$pingpong" 20000 | cut -d' ' -f1; }
for i in $(seq 1 "$n"); do
    for tag in A B; do
        cmd=$a; [ "$tag" = B ] && cmd=$b
        before=$(trip); result=$($cmd 2>&1); after=$(trip)
        if [ "$before" -lt "${NEAR_NS:-120}" ] && [ "$after" -lt "${NEAR_NS:-120}" ]; then
            echo "$result" > "$out/near_${tag}_$i.txt"
        elif [ "$before" -gt "${FAR_NS:-250}" ] && [ "$after" -gt "${FAR_NS:-250}" ]; then
            echo "$result" > "$out/far_${tag}_$i.txt"
        fi
    done
done
echo "results: $out" >&2
