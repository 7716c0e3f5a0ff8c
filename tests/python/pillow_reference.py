"""What the Python server a team would otherwise write answers for each image: the benchmark's
`xtask/bench/python_server.py` preprocessing (Pillow: bilinear resize to 256x256, center crop
224, ImageNet normalization), the model run by onnxruntime, softmax. Run by
tests/all/classifier.rs to hold Corral's image classifier (decoding and resizing inside the
WebAssembly guest) to the same answers within a stated tolerance.

    pillow_reference.py MODEL IMAGE...

Prints {"IMAGE": [[index, probability], ...five most likely]} as JSON.
"""

import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "xtask/bench"))
from python_server import preprocess  # noqa: E402  (the benchmark's own preprocessing)

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
