"""Pillow's side of `cargo xtask bench --preprocess`: each image given, decoded to RGB alone
and put through the Python server's whole preprocessing (`python_server.preprocess`: decode,
resize 256x256 bilinear, crop 224, normalize), ROUNDS times each, timed in process. Prints
{"IMAGE": {"decode_us": p50, "total_us": p50}} as JSON."""
import io
import json
import pathlib
import statistics
import sys
import time

from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from python_server import preprocess  # noqa: E402

rounds = int(sys.argv[1])
results = {}
for path in sys.argv[2:]:
    data = pathlib.Path(path).read_bytes()
    preprocess(data)  # warm: imports, allocator
    decode, total = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        Image.open(io.BytesIO(data)).convert("RGB").load()
        decode.append(time.perf_counter() - started)
        started = time.perf_counter()
        preprocess(data)
        total.append(time.perf_counter() - started)
    results[pathlib.Path(path).name] = {
        "decode_us": statistics.median(decode) * 1e6,
        "total_us": statistics.median(total) * 1e6,
    }
print(json.dumps(results))
