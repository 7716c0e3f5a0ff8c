"""The Python server a team would otherwise write: Starlette on uvicorn, Pillow and ONNX Runtime.

- POST /classify: a JPEG/PNG body -> the five most likely ImageNet classes, with the same
  preprocessing as Corral's image-classifier example (resize 256x256 bilinear, center crop 224,
  ImageNet mean/std, CHW).
- POST /json: {"features": [...]} -> {"scores": [...]} from the tabular MLP.

Models from BENCH_CLASSIFIER, BENCH_LABELS and BENCH_MLP; BENCH_INTRA_THREADS sets ONNX
Runtime's intra-op threads (0: its default, as Corral's); idle threads do not spin, as in Corral. Inference runs in Starlette's thread
pool, as FastAPI does for a plain `def` endpoint, so runs overlap.
"""
import io
import json
import os

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def preprocess(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((256, 256), Image.BILINEAR)
    image = image.crop((16, 16, 240, 240))
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((pixels - MEAN) / STD)[np.newaxis]


if os.environ.get("BENCH_CLASSIFIER"):
    import onnxruntime as ort
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("BENCH_INTRA_THREADS", "0"))
    # As Corral's default ([onnx] intra_op_spinning = false).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    classifier = ort.InferenceSession(os.environ["BENCH_CLASSIFIER"], options, providers=["CPUExecutionProvider"])
    mlp = ort.InferenceSession(os.environ["BENCH_MLP"], options, providers=["CPUExecutionProvider"])
    with open(os.environ["BENCH_LABELS"]) as f:
        labels = [line.split(" ", 1)[1].split(",")[0].strip() for line in f]

    def classify_image(data: bytes) -> list:
        logits = classifier.run(None, {"input": preprocess(data)})[0][0]
        exps = np.exp(logits - logits.max())
        probabilities = exps / exps.sum()
        top = np.argsort(-probabilities)[:5]
        return [{"index": int(i), "label": labels[i], "probability": float(probabilities[i])} for i in top]

    def score(features: list) -> list:
        x = np.asarray(features, dtype=np.float32)[np.newaxis]
        return mlp.run(None, {"x": x})[0][0].tolist()

    async def classify(request):
        data = await request.body()
        return JSONResponse({"predictions": await run_in_threadpool(classify_image, data)})

    async def features(request):
        body = json.loads(await request.body())
        return JSONResponse({"scores": await run_in_threadpool(score, body["features"])})

    app = Starlette(routes=[Route("/classify", classify, methods=["POST"]), Route("/json", features, methods=["POST"])])
