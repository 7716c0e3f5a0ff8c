"""Inputs for `cargo xtask bench`, written to the folder given as the only argument.

- mlp.onnx: a small tabular MLP (16 features -> 64 -> 64 -> 3, ReLU), fixed seed: a model whose
  compute is a few microseconds, so per-request overhead dominates.
- features.json: {"features": [16 floats]} for it.
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

rng = np.random.default_rng(7)
sizes = [16, 64, 64, 3]
nodes, inits = [], []
name = "x"
for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
    w = numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}")
    c = numpy_helper.from_array((rng.standard_normal(b) * 0.1).astype(np.float32), f"b{i}")
    inits += [w, c]
    nodes.append(helper.make_node("MatMul", [name, f"w{i}"], [f"m{i}"]))
    last = i == len(sizes) - 2
    nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"]))
    if not last:
        nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
        name = f"r{i}"
graph = helper.make_graph(
    nodes,
    "tabular_mlp",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 9
onnx.checker.check_model(model)
onnx.save(model, out / "mlp.onnx")

features = [round(float(v), 4) for v in rng.standard_normal(16)]
(out / "features.json").write_text(json.dumps({"features": features}))
(out / "dog.f32").write_bytes(preprocess(image.read_bytes()).astype("<f4").tobytes())
