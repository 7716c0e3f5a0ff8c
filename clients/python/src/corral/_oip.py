"""The Open Inference Protocol (KServe v2 REST) on the wire: numpy arrays to an infer request
with the binary tensor data extension, and an answer back to arrays."""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ._http import CorralError

Inputs = Union[Any, Mapping[str, Any], Sequence[Any]]

# The datatypes wasi:nn carries, as numpy dtypes (little-endian on the wire). BF16 has no numpy
# dtype: it travels as the upper half of float32.
DTYPES: dict[str, np.dtype[Any]] = {
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "UINT8": np.dtype("u1"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}


def _bf16_bytes(array: np.ndarray) -> bytes:
    floats = np.ascontiguousarray(array, dtype="<f4")
    bits = floats.view("<u4").astype("<u8")
    # Round to nearest even, as hardware does; a NaN stays a NaN.
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    rounded[np.isnan(floats)] = 0x7FC0
    data: bytes = rounded.tobytes()
    return data


def _cast(name: str, value: Any, datatype: str) -> np.ndarray:
    array = np.asarray(value)
    wanted: Optional[np.dtype[Any]] = (
        np.dtype("<f4") if datatype == "BF16" else DTYPES.get(datatype))
    if wanted is None:
        raise CorralError(f"input '{name}' is {datatype}, which this client cannot send")
    integers = wanted.kind in "iu" and array.dtype.kind in "iu"
    if (array.dtype != wanted and not integers
            and not np.can_cast(array.dtype, wanted, casting="same_kind")):
        raise CorralError(
            f"input '{name}' is {datatype} but the array given is {array.dtype} "
            f"(convert it, e.g. array.astype('{wanted.name}'))")
    if integers and array.size and not np.can_cast(array.dtype, wanted, casting="safe"):
        # Integers narrow only when every value fits.
        limits = np.iinfo(wanted)
        low, high = int(array.min()), int(array.max())
        if low < limits.min or high > limits.max:
            raise CorralError(
                f"input '{name}' is {datatype}, which cannot hold the values given "
                f"({low} to {high})")
    return np.ascontiguousarray(array, dtype=wanted)


def arrange(inputs: Inputs, declared: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, np.ndarray]]:
    """``(name, datatype, array)`` for each of the model's inputs, from one array (a model
    with one input), a mapping by name, or a sequence in the model's order; each array cast to
    the datatype the model declares when that loses no kind (float64 to FP32, not float to
    INT64)."""
    if not declared:
        return _undeclared(inputs)
    names = [str(d["name"]) for d in declared]
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - set(names))
        missing = [n for n in names if n not in inputs]
        if unknown or missing:
            raise CorralError(
                f"the model's inputs are {names}; "
                + (f"unknown: {unknown}" if unknown else f"missing: {missing}"))
        values = [inputs[n] for n in names]
    elif isinstance(inputs, (list, tuple)) and len(names) > 1:
        if len(inputs) != len(names):
            raise CorralError(f"the model has {len(names)} inputs ({names}); {len(inputs)} given")
        values = list(inputs)
    else:
        if len(names) != 1:
            raise CorralError(
                f"the model has {len(names)} inputs ({names}): pass a dict by name")
        values = [inputs]
    return [(n, str(d["datatype"]), _cast(n, v, str(d["datatype"])))
            for n, v, d in zip(names, values, declared)]


def _undeclared(inputs: Inputs) -> list[tuple[str, str, np.ndarray]]:
    """A model that declares no inputs (TorchScript): arrays in order, each as it is."""
    if isinstance(inputs, Mapping):
        named = [(str(k), v) for k, v in inputs.items()]
    elif isinstance(inputs, (list, tuple)):
        named = [(f"input{i}", v) for i, v in enumerate(inputs)]
    else:
        named = [("input0", inputs)]
    tensors = []
    for name, value in named:
        array = np.asarray(value)
        datatype = next((t for t, d in DTYPES.items() if d == array.dtype.newbyteorder("<")),
                        None)
        if datatype is None:
            raise CorralError(f"input '{name}' is {array.dtype}, which Corral does not carry")
        tensors.append((name, datatype, np.ascontiguousarray(array, dtype=DTYPES[datatype])))
    return tensors


def request(tensors: Sequence[tuple[str, str, np.ndarray]],
            outputs: Optional[Sequence[str]]) -> tuple[bytes, list[bytes]]:
    """The JSON header and the raw tensors that follow it."""
    entries = []
    raw = []
    for name, datatype, array in tensors:
        data = _bf16_bytes(array) if datatype == "BF16" else array.tobytes()
        entries.append({
            "name": name,
            "datatype": datatype,
            "shape": list(array.shape),
            "parameters": {"binary_data_size": len(data)},
        })
        raw.append(data)
    header: dict[str, Any] = {"inputs": entries, "parameters": {"binary_data_output": True}}
    if outputs is not None:
        header["outputs"] = [{"name": o} for o in outputs]
    return json.dumps(header).encode(), raw


def response(data: bytes, header_length: Optional[str]) -> dict[str, np.ndarray]:
    """The outputs of an infer answer, by name."""
    try:
        split = int(header_length) if header_length is not None else len(data)
        if not 0 <= split <= len(data):
            raise ValueError(f"Inference-Header-Content-Length {split} > {len(data)} bytes")
        answer = json.loads(data[:split])
        tail = memoryview(data)[split:]
        result = {}
        for output in answer["outputs"]:
            name, datatype = str(output["name"]), str(output["datatype"])
            shape = tuple(int(d) for d in output["shape"])
            size = (output.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                chunk, tail = tail[:int(size)], tail[int(size):]
                if datatype == "BF16":
                    bits = np.frombuffer(chunk, dtype="<u2").astype("<u4") << 16
                    array = bits.view("<f4")
                else:
                    array = np.frombuffer(chunk, dtype=DTYPES[datatype])
            else:
                dtype: np.dtype[Any] = np.dtype("<f4") if datatype == "BF16" else DTYPES[datatype]
                array = np.asarray(output["data"], dtype=dtype)
            # A writable array of its own, in native byte order.
            result[name] = np.array(array.reshape(shape), dtype=array.dtype.newbyteorder("="))
        return result
    except (ValueError, KeyError, TypeError) as e:
        raise CorralError(f"the infer answer is not one this client understands: {e}") from None
