"""What the Python server a team would otherwise write answers for each image: the benchmark's
`xtask/bench/python_server.py` preprocessing (Pillow: bilinear resize to 256x256, center crop
224, ImageNet normalization), the model run by onnxruntime, softmax. Run by
tests/all/classifier.rs to hold Corral's image classifier (decoding and resizing inside the
WebAssembly guest) to the same answers within a stated tolerance.

    pillow_reference.py MODEL IMAGE...
    pillow_reference.py --photo SOURCE WIDTH HEIGHT OUT

Prints {"IMAGE": [[index, probability], ...five most likely]} as JSON. With --photo, writes
OUT instead: SOURCE scaled (Lanczos) to cover WIDTH x HEIGHT, center-cropped, saved as a JPEG
of quality 90 with 4:2:0 chroma subsampling, as cameras and phones save them (the recipe of
the benchmark's photos, xtask/bench/fixtures.py).
"""

import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "xtask/bench"))
from python_server import preprocess  # noqa: E402  (the benchmark's own preprocessing)

if sys.argv[1] == "--photo":
    from PIL import Image

    source, width, height, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    photo = Image.open(source).convert("RGB")
    scale = max(width / photo.width, height / photo.height)
    scaled = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.LANCZOS)
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    scaled.crop((left, top, left + width, top + height)).save(out, quality=90, subsampling="4:2:0")
    sys.exit(0)

model, images = sys.argv[1], sys.argv[2:]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
answers = {}
for image in images:
    logits = session.run(None, {"input": preprocess(pathlib.Path(image).read_bytes())})[0][0]
    exps = np.exp(logits - logits.max())
    probabilities = exps / exps.sum()
    top = np.argsort(-probabilities)[:5]
    answers[image] = [[int(i), float(probabilities[i])] for i in top]
print(json.dumps(answers))
