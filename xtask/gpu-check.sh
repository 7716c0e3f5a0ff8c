#!/usr/bin/env bash
# The GPU check: EfficientNet-Lite0 served by `corral serve` on a GPU, through the image
# classifier (dog.jpg must still be class 207) and the raw-tensor guest `bench-nn`, at
# concurrency 1, 8, 32 and 128 with batching off and on, against ONNX Runtime alone on the
# same GPU in process (`bench_probe native`). It builds nothing: it runs a bundle made here.
#
#   xtask/gpu-check.sh pack OUT [PART_MIB]
#       On a build machine, after `cargo xtask setup --gpu`, `cargo xtask build-guests` and
#       `cargo build --release -p corral --bin corral --example bench_probe`: writes the
#       bundle to OUT as xz-compressed parts of at most PART_MIB MiB each (default 20), so
#       that each fits in one transfer to a machine that takes little per call. The NVIDIA
#       CUDA libraries are left out: the GPU machine has its own (CUDA 13, cuDNN 9).
#   xtask/gpu-check.sh unpack PARTS_DIR BUNDLE
#       Joins the parts (in name order) and unpacks them into BUNDLE.
#   xtask/gpu-check.sh run BUNDLE [DEVICE]
#       The check itself, on DEVICE (default cuda:0; `cpu` runs the same steps on the CPU,
#       to try the flow on a machine without a GPU). Prints a Markdown table and writes
#       the raw JSON lines to BUNDLE/results/. Under five minutes with the defaults.
#
# Settings for `run` (environment): GPU_CHECK_SECONDS (each concurrency level, default 5),
# GPU_CHECK_LEVELS (default 1,8,32,128), CORRAL_CUDA_LIBRARY_PATH (folders of the CUDA 13 and
# cuDNN 9 libraries; by default the `nvidia/*/lib` folders of the machine's Python packages,
# as PyTorch installs them).
set -euo pipefail

die() {
  echo "gpu-check: $*" >&2
  exit 1
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

pack() {
  local out="$1" part_mib="${2:-20}"
  local target="${CARGO_TARGET_DIR:-$root/target}"
  local guests="${CORRAL_GUEST_DIR:-$target/guests/wasm32-wasip2/release}"
  local ort="$root/.corral/onnxruntime-gpu"
  local stage
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' RETURN
  mkdir -p "$stage/bin" "$stage/guests" "$stage/model" "$stage/onnxruntime-gpu" "$out"
  for file in "$target/release/corral" "$target/release/examples/bench_probe"; do
    [ -x "$file" ] || die "$file is missing: cargo build --release -p corral --bin corral --example bench_probe"
    strip -o "$stage/bin/$(basename "$file")" "$file"
  done
  for guest in image-classifier bench-nn; do
    [ -f "$guests/$guest.wasm" ] || die "$guests/$guest.wasm is missing: cargo xtask build-guests"
    cp "$guests/$guest.wasm" "$stage/guests/"
  done
  for lib in libonnxruntime.so libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so; do
    [ -f "$ort/$lib" ] || die "$ort/$lib is missing: cargo xtask setup --gpu"
    cp "$ort/$lib" "$stage/onnxruntime-gpu/"
  done
  cp "$root/examples/image-classifier/model/efficientnet-lite0.onnx" "$stage/model/"
  cp "$root/examples/image-classifier/samples/dog.jpg" "$stage/model/"
  cp "${BASH_SOURCE[0]}" "$stage/gpu-check.sh"
  rm -f "$out"/bundle.tar.xz.*
  tar -C "$stage" -cf - . | xz -T0 -9 | split -b "${part_mib}M" -d -a 2 - "$out/bundle.tar.xz."
  du -b "$stage"/bin/* "$stage"/onnxruntime-gpu/* | sed 's/^/unpacked: /'
  ls -l "$out"/bundle.tar.xz.* | awk '{ total += $5; print "part: " $5 " " $9 } END { print "parts: " NR ", " total " bytes in all" }'
}

unpack() {
  local parts="$1" bundle="$2"
  mkdir -p "$bundle"
  ls "$parts"/bundle.tar.xz.* >/dev/null 2>&1 || die "no bundle.tar.xz.* in $parts"
  cat "$parts"/bundle.tar.xz.* | xz -d | tar -C "$bundle" -xf -
}

# The folders of NVIDIA's CUDA libraries that the machine's Python packages hold.
python_cuda_folders() {
  python3 - <<'EOF' 2>/dev/null || true
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
found = []
for root in roots:
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")) + glob.glob(os.path.join(root, "nvidia", "cu13", "lib"))):
        if lib not in found:
            found.append(lib)
print(":".join(found))
EOF
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts `corral serve` on a fresh data folder with max_batch_size $1; sets data, admin, token, pid.
serve() {
  local batch="$1"
  data_dir="$work/data-batch-$batch"
  rm -rf "$data_dir"
  data="127.0.0.1:$(free_port)"
  admin="127.0.0.1:$(free_port)"
  CORRAL_TLS_ENABLED=false CORRAL_INFERENCE_DEVICES="[\"$device\"]" \
    CORRAL_BATCHING_MAX_BATCH_SIZE="$batch" RUST_LOG=warn \
    "$bundle/bin/corral" serve --data "$data_dir" --listen "$data" --admin-listen "$admin" \
    >"$work/serve-batch-$batch.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$work/serve-batch-$batch.log" >&2
      die "corral serve exited before listening (log above)"
    fi
    if [ -f "$data_dir/admin-token" ] && (echo >"/dev/tcp/${admin%:*}/${admin#*:}") 2>/dev/null; then
      token="$(cat "$data_dir/admin-token")"
      return
    fi
    sleep 0.1
  done
  die "corral serve did not listen on $admin within 60 s"
}

# The dog through the image classifier: its top class must be 207 (golden retriever).
check_dog() {
  python3 - "$data" "$bundle/model/dog.jpg" <<'EOF'
import http.client, json, sys
host, port = sys.argv[1].rsplit(":", 1)
body = open(sys.argv[2], "rb").read()
connection = http.client.HTTPConnection(host, int(port), timeout=60)
connection.request("POST", "/", body, {"Host": "t0.localhost", "Content-Type": "image/jpeg"})
answer = connection.getresponse()
text = answer.read().decode()
if answer.status != 200:
    sys.exit(f"gpu-check: the dog got HTTP {answer.status}: {text}")
top = json.loads(text)["predictions"][0]
if top["index"] != 207:
    sys.exit(f"gpu-check: the dog is class {top['index']} ({top}), not 207")
print(f"dog.jpg -> {top['index']} {top['label']} p={top['probability']:.4f}")
EOF
}

# Where the models were placed, from the operator API's tenant status.
placement() {
  python3 - "$admin" "$token" <<'EOF'
import http.client, json, sys
host, port = sys.argv[1].rsplit(":", 1)
connection = http.client.HTTPConnection(host, int(port), timeout=10)
connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {sys.argv[2]}"})
text = connection.getresponse().read().decode()
lines = [l for l in text.splitlines() if l.startswith(("corral_model_resident_bytes", "corral_models_memory_budget_bytes"))]
print("\n".join(lines))
EOF
}

run_check() {
  bundle="$(cd "$1" && pwd)"
  device="${2:-cuda:0}"
  local seconds="${GPU_CHECK_SECONDS:-5}" levels="${GPU_CHECK_LEVELS:-1,8,32,128}"
  work="$bundle/results"
  rm -rf "$work"
  mkdir -p "$work"
  export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$bundle/onnxruntime-gpu/libonnxruntime.so}"
  if [ -z "${CORRAL_CUDA_LIBRARY_PATH:-}" ]; then
    CORRAL_CUDA_LIBRARY_PATH="$(python_cuda_folders)"
    export CORRAL_CUDA_LIBRARY_PATH
  fi
  local model="$bundle/model/efficientnet-lite0.onnx" tensor="$work/tensor.f32"
  head -c $((3 * 224 * 224 * 4)) /dev/zero >"$tensor"
  {
    echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ) on $device"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /'
    fi
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
    echo "onnx runtime: $ORT_DYLIB_PATH"
  } | tee "$work/machine.txt"

  local started=$SECONDS
  echo "== ONNX Runtime alone on $device (bench_probe native, one shared session)"
  "$bundle/bin/bench_probe" native "$model" input 1,3,224,224 "$seconds" "$levels" 0 "$device" \
    | tee "$work/native.jsonl"
  for batch in 1 32; do
    echo "== corral serve on $device, max_batch_size $batch"
    serve "$batch"
    "$bundle/bin/bench_probe" tenants "http://$admin" "$token" 0 1 \
      "$bundle/guests/image-classifier.wasm" "classifier=$model" >/dev/null
    "$bundle/bin/bench_probe" tenants "http://$admin" "$token" 1 2 \
      "$bundle/guests/bench-nn.wasm" "model=$model" >/dev/null
    check_dog | tee -a "$work/machine.txt"
    "$bundle/bin/bench_probe" load "$data" t1.localhost /tensor "$tensor" "$seconds" "$levels" \
      "x-shape:1,3,224,224" "content-type:application/octet-stream" \
      | tee "$work/tensor-batch-$batch.jsonl"
    "$bundle/bin/bench_probe" load "$data" t0.localhost / "$bundle/model/dog.jpg" "$seconds" "$levels" \
      "content-type:image/jpeg" | tee "$work/classifier-batch-$batch.jsonl"
    placement | tee "$work/placement-batch-$batch.txt"
    grep -q "device=\"$device\"" "$work/placement-batch-$batch.txt" \
      || die "no model is resident on $device (see $work/placement-batch-$batch.txt)"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
  echo "== done in $((SECONDS - started)) s"
  table
}

# One Markdown table of requests/s and p50/p99 (ms) per concurrency, from the JSON lines.
table() {
  python3 - "$work" <<'EOF'
import json, os, sys
work = sys.argv[1]
def read(name):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return {}
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    return {r["concurrency"]: r for r in rows}
columns = [
    ("ONNX Runtime alone", read("native.jsonl")),
    ("raw tensor, batching off", read("tensor-batch-1.jsonl")),
    ("raw tensor, batching on", read("tensor-batch-32.jsonl")),
    ("classifier (dog.jpg), batching off", read("classifier-batch-1.jsonl")),
    ("classifier (dog.jpg), batching on", read("classifier-batch-32.jsonl")),
]
levels = sorted({c for _, rows in columns for c in rows})
print("| concurrency | " + " | ".join(name for name, _ in columns) + " |")
print("|---:|" + "---:|" * len(columns))
for c in levels:
    cells = []
    for _, rows in columns:
        r = rows.get(c)
        if r is None:
            cells.append("")
        else:
            bad = f", {r['not_ok']} not 200" if r.get("not_ok") else ""
            cells.append(f"{r['rps']:.0f}/s, p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms{bad}")
    print(f"| {c} | " + " | ".join(cells) + " |")
EOF
}

case "${1:-}" in
  pack) shift; [ $# -ge 1 ] || die "usage: gpu-check.sh pack OUT [PART_MIB]"; pack "$@" ;;
  unpack) shift; [ $# -eq 2 ] || die "usage: gpu-check.sh unpack PARTS_DIR BUNDLE"; unpack "$@" ;;
  run) shift; [ $# -ge 1 ] || die "usage: gpu-check.sh run BUNDLE [DEVICE]"; run_check "$@" ;;
  *) die "usage: gpu-check.sh pack OUT [PART_MIB] | unpack PARTS_DIR BUNDLE | run BUNDLE [DEVICE]" ;;
esac
