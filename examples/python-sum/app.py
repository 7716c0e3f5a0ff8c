"""A Corral service in Python (componentize-py): POST {"a": [4 numbers], "b": [4 numbers]}
runs the `add` model (tests/fixtures/add.onnx: sum = a + b over f32 [2, 2]) through wasi:nn
and answers {"sum": [...], "shape": [2, 2]}. A wasi:nn error comes back as 422 with its code.
"""

import json
import struct

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import graph, tensor
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

MAX_BODY = 64 * 1024


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        try:
            status, answer = 200, add(json.loads(read_body(request)))
        except NnError as e:
            status, answer = 422, {"code": e.code, "message": e.message}
        except KeyError as e:
            status, answer = 400, {"error": {"code": "bad_request", "message": f"missing field {e}"}}
        except (ValueError, TypeError) as e:
            status, answer = 400, {"error": {"code": "bad_request", "message": str(e)}}
        respond(response_out, status, json.dumps(answer).encode())


class NnError(Exception):
    def __init__(self, error):
        self.code = error.code().name.lower().replace("_", "-")
        self.message = error.data()


def add(query):
    a, b = [float(x) for x in query["a"]], [float(x) for x in query["b"]]
    if len(a) != 4 or len(b) != 4:
        raise ValueError("'a' and 'b' must hold 4 numbers each")
    try:
        model = graph.load_by_name("add")
        context = model.init_execution_context()
        outputs = dict(context.compute([("a", f32_tensor(a)), ("b", f32_tensor(b))]))
    except Err as e:
        raise NnError(e.value)
    total = outputs["sum"]
    data = total.data()
    values = list(struct.unpack(f"<{len(data) // 4}f", data))
    return {"sum": values, "shape": total.dimensions()}


def f32_tensor(values):
    return tensor.Tensor([2, 2], tensor.TensorType.FP32, struct.pack("<4f", *values))


def read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    stream = body.stream()
    chunks, size = [], 0
    while True:
        try:
            chunk = stream.blocking_read(16 * 1024)
        except Err:
            break  # the body is closed
        size += len(chunk)
        if size > MAX_BODY:
            raise ValueError(f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    stream.__exit__(None, None, None)
    return b"".join(chunks)


def respond(response_out: ResponseOutparam, status: int, payload: bytes) -> None:
    headers = Fields.from_list([("content-type", b"application/json")])
    response = OutgoingResponse(headers)
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    for start in range(0, len(payload), 4096):
        stream.blocking_write_and_flush(payload[start : start + 4096])
    stream.__exit__(None, None, None)
    OutgoingBody.finish(body, None)
