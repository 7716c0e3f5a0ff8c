#!/usr/bin/env bash
# Shared sessions, measured: `corral run` on the image classifier (debug host build, as the demo
# runs it), 320 requests of samples/dog.jpg at concurrency 32 with curl, reporting throughput and
# resident memory for:
#   - one shared session, runs in parallel (the default);
#   - one shared session, one run at a time (--max-parallel-inference 1: the behaviour of a
#     session behind a mutex);
#   - a second session holding the same weights (what a per-instance or per-tenant copy costs).
# Run from the repository root after `cargo xtask demo` (needs python3 with `onnx` for the copy).
set -euo pipefail
T=${CARGO_TARGET_DIR:-target}
WASM=$T/guests/wasm32-wasip2/release/image-classifier.wasm
MODEL=examples/image-classifier/model/efficientnet-lite0.onnx
IMAGE=examples/image-classifier/samples/dog.jpg
COPY=$(mktemp --suffix=.onnx)
python3 -c "import onnx,sys; m=onnx.load(sys.argv[1]); m.producer_name='copy'; onnx.save(m, sys.argv[2])" "$MODEL" "$COPY"
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
measure() {
  local label=$1; shift
  "$T/debug/corral" run "$WASM" "$@" --listen 127.0.0.1:8091 >/dev/null 2>&1 &
  local pid=$!
  until curl -s -o /dev/null 127.0.0.1:8091; do sleep 0.2; done
  curl -s -o /dev/null --data-binary @"$IMAGE" 127.0.0.1:8091/   # warm up
  local idle; idle=$(rss $pid)
  local start; start=$(date +%s.%N)
  seq 320 | xargs -P 32 -I{} curl -s -o /dev/null --data-binary @"$IMAGE" 127.0.0.1:8091/
  local end; end=$(date +%s.%N)
  local loaded; loaded=$(rss $pid)
  printf '| %s | %.1f | %s | %s |\n' "$label" "$(echo "320 / ($end - $start)" | bc -l)" "$idle" "$loaded"
  kill $pid; wait $pid 2>/dev/null || true
}
echo "| configuration | requests/s | RSS after 1 request (MiB) | RSS after 320 requests (MiB) |"
echo "|---|---|---|---|"
measure "one shared session, parallel runs (default)" --model classifier=$MODEL
measure "one shared session, one run at a time" --model classifier=$MODEL --max-parallel-inference 1
measure "plus a second session of the same weights" --model classifier=$MODEL --model copy=$COPY
rm -f "$COPY"
