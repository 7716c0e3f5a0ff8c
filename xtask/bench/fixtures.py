"""Inputs for `cargo xtask bench`, written to the folder given as the only argument.

- mlp.onnx: a small tabular MLP (16 features -> 64 -> 64 -> 3, ReLU), fixed seed: a model whose
  compute is a few microseconds, so per-request overhead dominates.
- features.json: {"features": [16 floats]} for it.
- wide_mlp.onnx: 256 -> 2048 -> 2048 -> 2048 -> 16 (ReLU), fixed seed, input `input` with a
  dynamic batch: 34 MB of weights, so a batch-1 run is bound by reading them (the batching
  benchmark's weight-bound model). wide.f32: one row of 256 floats for it, raw f32 bytes.
- photo-*.jpg, photo-640x480.png: photos of ordinary sizes (photos/README.md).
- dog.f32: dog.jpg preprocessed exactly as the image-classifier example does (resize to 256x256,
  center crop 224, ImageNet mean/std, CHW), as raw little-endian f32 bytes: the raw-tensor
  input for the host-overhead comparison.
"""
import json
import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from python_server import preprocess  # noqa: E402

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
image = pathlib.Path(sys.argv[2])


def mlp(rng, sizes, name, input_name, output_name):
    nodes, inits = [], []
    current = input_name
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}")
        c = numpy_helper.from_array((rng.standard_normal(b) * 0.1).astype(np.float32), f"b{i}")
        inits += [w, c]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [output_name if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


rng = np.random.default_rng(7)
onnx.save(mlp(rng, [16, 64, 64, 3], "tabular_mlp", "x", "y"), out / "mlp.onnx")

# Its own generator, so the other fixtures stay what they were.
wide_rng = np.random.default_rng(11)
onnx.save(mlp(wide_rng, [256, 2048, 2048, 2048, 16], "wide_mlp", "input", "output"), out / "wide_mlp.onnx")
(out / "wide.f32").write_bytes(wide_rng.standard_normal(256).astype("<f4").tobytes())

features = [round(float(v), 4) for v in rng.standard_normal(16)]
(out / "features.json").write_text(json.dumps({"features": features}))
(out / "dog.f32").write_bytes(preprocess(image.read_bytes()).astype("<f4").tobytes())

# Photos of ordinary sizes for the preprocessing benchmark (xtask/bench/photos/README.md):
# the original, and derived sizes as a camera would save them.
from PIL import Image  # noqa: E402

photo = Image.open(pathlib.Path(__file__).parent / "photos/china.jpg").convert("RGB")
(out / "photo-640x427.jpg").write_bytes((pathlib.Path(__file__).parent / "photos/china.jpg").read_bytes())
for width, height in [(640, 480), (1280, 720), (1920, 1080)]:
    scale = max(width / photo.width, height / photo.height)
    size = (round(photo.width * scale), round(photo.height * scale))
    scaled = photo.resize(size, Image.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    cropped = scaled.crop((left, top, left + width, top + height))
    cropped.save(out / f"photo-{width}x{height}.jpg", quality=90, subsampling="4:2:0")
    if width == 640:
        cropped.save(out / f"photo-{width}x{height}.png")
