"""`cargo xtask bench --profile`'s reading of one `perf record` of `corral serve`: where the
server's CPU time went, per request, by part of the request path. Prints one JSON object.

    perf_breakdown.py PERF_DATA REQUESTS HZ

Samples are attributed by thread (the run threads run the model; the async workers run HTTP,
instances and guests), shared object and symbol. Guest code is named because wasmtime's
compiled components (`*.cwasm`, mapped from Corral's cache) carry a symbol per WebAssembly
function, named after the guest's Rust functions.
"""

import json
import subprocess
import sys
from collections import Counter

data, requests, hz = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])

# (part, test on (thread, dso, symbol)), first match wins; the order of the report.
PARTS = [
    ("ONNX Runtime (the model)", lambda t, d, s: "libonnxruntime" in d or ("libstdc++" in d and t == "run")),
    ("guest: JPEG/PNG decode", lambda t, d, s: d.endswith(".cwasm") and any(
        k in s for k in ("zune_jpeg", "zune_core", "png..", "_3png", "fdeflate", "miniz", "inflate", "image..codecs", "_5image6codecs"))),
    ("guest: resize, crop, normalize", lambda t, d, s: d.endswith(".cwasm") and (
        "resize_crop_normalize" in s or "Axis" in s or "vision" in s)),
    ("guest: the rest (handler, JSON, allocator)", lambda t, d, s: d.endswith(".cwasm")),
    ("host: copies (memcpy, memset)", lambda t, d, s: "libc" in d and ("memmove" in s or "memcpy" in s or "memset" in s)),
    ("host: wasmtime (instances, guest memory, calls)", lambda t, d, s: "wasmtime" in s or "cranelift" in s),
    ("host: HTTP (hyper, tokio)", lambda t, d, s: any(k in s for k in ("hyper", "http", "tokio", "mio", "h2::"))),
    ("host: wasi:nn and the scheduler", lambda t, d, s: "corral::nn" in s or "corral::inference" in s or "corral::backends" in s),
    ("kernel: memory (page faults, zeroing, unmapping)", lambda t, d, s: "kernel" in d and any(
        k in s for k in ("page", "fault", "pte", "pmd", "mm_", "folio", "memcg", "lru", "vma", "mas_", "zap", "tlb", "madvise", "pagemap"))),
    ("kernel: network and syscalls", lambda t, d, s: "kernel" in d and any(
        k in s for k in ("tcp", "sock", "skb", "net", "ip_", "softirq", "syscall", "epoll", "copy_to_iter", "copy_from_iter", "loopback"))),
    ("kernel: scheduling and the rest", lambda t, d, s: "kernel" in d),
    ("host: the rest", lambda t, d, s: True),
]

report = subprocess.run(
    ["perf", "report", "-i", data, "--sort", "comm,dso,sym", "-n", "--stdio", "-t", "\t"],
    capture_output=True, text=True, check=True,
).stdout
parts = Counter()
threads = Counter()
total = 0
for line in report.splitlines():
    if line.startswith("#") or not line.strip():
        continue
    fields = [f.strip() for f in line.split("\t")]
    if len(fields) < 5:
        continue
    samples, comm, dso, symbol = int(fields[1]), fields[2], fields[3], fields[4]
    if not comm.startswith(("corral", "tokio")):
        continue  # Not the server's (a recording of every CPU also holds idle and the client).
    thread = "run" if comm.startswith("corral-run") else "async" if comm.startswith("tokio") else "other"
    for name, test in PARTS:
        if test(thread, dso, symbol):
            parts[name] += samples
            break
    threads[thread] += samples
    total += samples

per_request_ms = lambda samples: samples / hz / requests * 1e3
print(json.dumps({
    "samples": total,
    "cpu_ms_per_request": per_request_ms(total),
    "parts": {name: per_request_ms(parts[name]) for name, _ in PARTS if parts[name]},
    "threads": {name: per_request_ms(n) for name, n in threads.items()},
}))
