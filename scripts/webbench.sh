#!/usr/bin/env bash
# In-browser benchmark of resnet-wasm next to ONNX Runtime Web and TensorFlow.js, with the
# peer harness in $RESNET_SHARED/bench/web (its serve.mjs, bench.cjs and site/ pages) and
# our page web/bench/resnet-wasm.html, in headless Chromium, one job (fresh browser) at a time.
#
# usage: scripts/webbench.sh WORK_DIR [JOB|GROUP ...]
#   WORK_DIR  as the harness's setup.sh leaves it: node/node_modules (playwright-core,
#             onnxruntime-web, @tensorflow/tfjs, @tensorflow/tfjs-backend-wasm) and
#             models/{resnet20,resnet18,resnet50}.onnx
#   JOB       a bench.cjs job, e.g. "ort.html?model=resnet50&batch=1" or
#             "resnet/bench/resnet-wasm.html?model=resnet50&batch=1" (prefix "coi:" for the
#             cross-origin-isolated server); runs=/warmup= are used as given
#   GROUP     ours | ort | tfjs | tftrain (the default: all four), imagenet (resnet18/50 b1,
#             all three engines), coi (COOP/COEP: ORT with 2 threads, our threaded build
#             with 2 threads and our one-thread b1 beside it), relaxed (our SIMD128
#             and relaxed-SIMD builds alternating, resnet20 b1, b32 and training, ROUNDS
#             times (3); the table ends with each build's median and the ratio)
# env: RESNET_SHARED (default ../shared beside the repo), CHROMIUM (/usr/bin/chromium),
#      PORT (8811; PORT+1 serves with COOP/COEP), TIMEOUT (s per job, 1500),
#      RUNS / WARMUP (override every default count below, e.g. RUNS=2 WARMUP=1 for a smoke
#      test), or per kind RUNS_B1 WARMUP_B1 (30/5), RUNS_B32 WARMUP_B32 (12/2),
#      RUNS_TRAIN WARMUP_TRAIN (10/1), RUNS_BIG WARMUP_BIG (10/2, ImageNet nets),
#      RUNS_TFCPU WARMUP_TFCPU (4/1, the TF.js cpu-backend training: about a minute a step)
# Results: WORK_DIR/results-DATE.jsonl, screenshots in WORK_DIR/shots; prints a table.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { sed -n '2,22p' "$0"; exit 2; }
W="$(cd "$1" && pwd)" || exit 2
shift
shared="${RESNET_SHARED:-$repo/../shared}"
harness="$(cd "$shared/bench/web" 2>/dev/null && pwd)" || { echo "no peer harness at $shared/bench/web (set RESNET_SHARED)" >&2; exit 2; }
chromium="${CHROMIUM:-/usr/bin/chromium}"
port="${PORT:-8811}"; coi_port=$((port + 1))
for need in "$W/node/node_modules/playwright-core" "$W/models/resnet20.onnx" "$repo/web/pkg/index.js"; do
  [ -e "$need" ] || { echo "missing $need" >&2; exit 2; }
done

b1="runs=${RUNS:-${RUNS_B1:-30}}&warmup=${WARMUP:-${WARMUP_B1:-5}}"
b32="runs=${RUNS:-${RUNS_B32:-12}}&warmup=${WARMUP:-${WARMUP_B32:-2}}"
tr="runs=${RUNS:-${RUNS_TRAIN:-10}}&warmup=${WARMUP:-${WARMUP_TRAIN:-1}}"
big="runs=${RUNS:-${RUNS_BIG:-10}}&warmup=${WARMUP:-${WARMUP_BIG:-2}}"
tfcpu="runs=${RUNS:-${RUNS_TFCPU:-4}}&warmup=${WARMUP:-${WARMUP_TFCPU:-1}}"
ours="resnet/bench/resnet-wasm.html"

jobs=()
[ $# -gt 0 ] || set -- ours ort tfjs tftrain
for a in "$@"; do
  case "$a" in
  *.html*) jobs+=("$a") ;;
  ours) jobs+=("$ours?model=resnet20&batch=1&$b1" "$ours?model=resnet20&batch=32&$b32"
               "$ours?mode=train&model=resnet20&batch=32&$tr") ;;
  ort) jobs+=("ort.html?model=resnet20&batch=1&threads=1&$b1" "ort.html?model=resnet20&batch=32&threads=1&$b32") ;;
  tfjs) jobs+=("tfjs.html?backend=wasm&model=resnet20&batch=1&$b1" "tfjs.html?backend=wasm&model=resnet20&batch=32&$b32") ;;
  tftrain) jobs+=("tfjs.html?backend=cpu&mode=train&model=resnet20&batch=32&$tfcpu") ;;
  imagenet) jobs+=("$ours?model=resnet18&batch=1&$big" "$ours?model=resnet50&batch=1&$big"
                   "ort.html?model=resnet18&batch=1&threads=1&$big" "ort.html?model=resnet50&batch=1&threads=1&$big"
                   "tfjs.html?backend=wasm&model=resnet50&batch=1&$big") ;;
  relaxed) for _ in $(seq "${ROUNDS:-3}"); do
             for j in "model=resnet20&batch=1&$b1" "model=resnet20&batch=32&$b32" "mode=train&model=resnet20&batch=32&$tr"; do
               jobs+=("$ours?build=simd128&$j" "$ours?build=relaxed&$j")
             done
           done ;;
  coi) jobs+=("coi:ort.html?model=resnet20&batch=1&threads=2&$b1" "coi:ort.html?model=resnet20&batch=32&threads=2&$b32"
              "coi:$ours?model=resnet20&batch=1&threads=1&$b1" "coi:$ours?model=resnet20&batch=1&threads=2&$b1"
              "coi:$ours?model=resnet20&batch=32&threads=2&$b32" "coi:$ours?mode=train&model=resnet20&batch=32&threads=2&$tr") ;;
  *) echo "unknown job or group: $a" >&2; exit 2 ;;
  esac
done

# The harness's pages at /site, their packages and models, and ours beside them: our page
# is web/bench/resnet-wasm.html and imports ../pkg/index.js, so web/ goes to /site/resnet.
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
for spec in "$port" "$coi_port --coi"; do
  set -- $spec
  node "$harness/serve.mjs" --port "$1" ${2:-} --mount "/site=$harness/site" \
    --mount "/node_modules=$W/node/node_modules" --mount "/models=$W/models" \
    --mount "/site/resnet=$repo/web" > "$W/serve-$1.log" 2>&1 &
  pids+=($!)
done
for p in "$port" "$coi_port"; do
  for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$p/site/$ours" && break; sleep 0.2; done
  curl -sf -o /dev/null "http://127.0.0.1:$p/site/$ours" || { echo "server on $p did not come up:" >&2; cat "$W/serve-$p.log" >&2; exit 1; }
done

out="$W/results-$(date +%Y%m%d-%H%M%S).jsonl"
failed=0
for job in "${jobs[@]}"; do
  echo ">> $job" >&2
  # The harness's lock keeps its own benchmarks from running at the same time as ours.
  NODE_PATH="$W/node/node_modules" flock /tmp/cpu-bench.lock node "$harness/bench.cjs" --chromium "$chromium" \
    --base "http://127.0.0.1:$port" --coi-base "http://127.0.0.1:$coi_port" \
    --out "$out" --shots "$W/shots" --timeout "${TIMEOUT:-1500}" "$job" >/dev/null || failed=$((failed + 1))
done
node "$repo/scripts/webbench_table.mjs" "$out"
echo "results: $out" >&2
exit $((failed > 0))
