"""NVIDIA's tritonclient (the Open Inference Protocol over HTTP) against Corral's built-in
inference component, unchanged: server and model health, model metadata, and inference with
JSON and with binary tensor data. Run by tests/all/open_inference.rs with the address of
Corral's data plane and the tenant's host name (sent as `Host`, since it need not resolve)."""

import json
import sys

import numpy as np
import tritonclient.http as httpclient

url, host = sys.argv[1], sys.argv[2]
headers = {"Host": host}
client = httpclient.InferenceServerClient(url=url)

assert client.is_server_live(headers=headers), "server live"
assert client.is_server_ready(headers=headers), "server ready"
assert client.is_model_ready("add", headers=headers), "model ready"
assert not client.is_model_ready("nope", headers=headers), "an unknown model is not ready"

metadata = client.get_model_metadata("add", headers=headers)
inputs = {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]}
assert inputs == {"a": ("FP32", [2, 2]), "b": ("FP32", [2, 2])}, metadata
assert [o["name"] for o in metadata["outputs"]] == ["sum"], metadata

a = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
b = np.array([[10.0, 20.0], [30.0, 40.0]], dtype=np.float32)
results = {}
for binary in (False, True):
    tensors = []
    for name, value in (("a", a), ("b", b)):
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        tensors.append(tensor)
    outputs = [httpclient.InferRequestedOutput("sum", binary_data=binary)]
    answer = client.infer("add", tensors, outputs=outputs, headers=headers)
    total = answer.as_numpy("sum")
    np.testing.assert_allclose(total, a + b)
    results["binary" if binary else "json"] = total.tolist()

try:
    client.infer("nope", tensors, headers=headers)
    raise AssertionError("an unknown model was answered")
except httpclient.InferenceServerException as e:
    results["unknown_model"] = {"status": e.status(), "message": e.message()}

print(json.dumps(results))
