"""The client's Open Inference Protocol codec on its own: what it sends for each datatype and
what it refuses before sending."""

from __future__ import annotations

import json

import numpy as np
import pytest

import corral
from corral import _oip

DECLARED = [{"name": "x", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "n", "datatype": "INT64", "shape": [-1]}]


def test_inputs_are_cast_to_the_declared_datatype_only_when_no_kind_is_lost():
    tensors = _oip.arrange({"x": [[1.5, 2.0]], "n": np.array([3], np.int32)}, DECLARED)
    assert [(name, dt, a.dtype.str) for name, dt, a in tensors] == [
        ("x", "FP32", "<f4"), ("n", "INT64", "<i8")]
    with pytest.raises(corral.CorralError, match="input 'n' is INT64 but the array given is float64"):
        _oip.arrange({"x": [[1.0, 2.0]], "n": [1.5]}, DECLARED)
    with pytest.raises(corral.CorralError, match=r"missing: \['n'\]"):
        _oip.arrange({"x": [[1.0, 2.0]]}, DECLARED)
    with pytest.raises(corral.CorralError, match=r"unknown: \['y'\]"):
        _oip.arrange({"x": [[1.0, 2.0]], "n": [1], "y": [0]}, DECLARED)
    with pytest.raises(corral.CorralError, match="pass a dict by name"):
        _oip.arrange(np.zeros((1, 2)), DECLARED)


def test_a_request_is_a_json_header_then_raw_little_endian_tensors():
    tensors = _oip.arrange([np.array([[1.0, 2.0]]), np.array([7])], DECLARED)
    header, raw = _oip.request(tensors, ["y"])
    parsed = json.loads(header)
    assert parsed["parameters"] == {"binary_data_output": True}
    assert parsed["outputs"] == [{"name": "y"}]
    assert parsed["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [1, 2],
                                   "parameters": {"binary_data_size": 8}}
    assert raw == [np.array([1.0, 2.0], "<f4").tobytes(), np.array([7], "<i8").tobytes()]


def test_bfloat16_rounds_to_nearest_even_and_comes_back_as_float32():
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 3.15, -2.5, np.nan, np.inf], np.float32)
    tensors = _oip.arrange(values, [{"name": "b", "datatype": "BF16", "shape": [-1]}])
    _, raw = _oip.request(tensors, None)
    # Little-endian halves: 1.0 is 0x3F80; a tie rounds to even (down for 1 + 2^-8, up for
    # 1 + 3 * 2^-8); 3.15 rounds up to 3.15625.
    assert raw[0][:2] == b"\x80\x3f"
    header = json.dumps({"outputs": [{"name": "b", "datatype": "BF16", "shape": [7],
                                      "parameters": {"binary_data_size": 14}}]}).encode()
    back = _oip.response(header + raw[0], str(len(header)))["b"]
    assert back.dtype == np.float32
    assert back[:5].tolist() == [1.0, 1.0, 1 + 2**-6, 3.15625, -2.5]
    assert np.isnan(back[5]) and back[6] == np.inf


def test_integers_narrow_only_when_every_value_fits():
    declared = [{"name": "i", "datatype": "INT32", "shape": [-1]}]
    (_, _, fits), = _oip.arrange(np.array([1, -5, 2**31 - 1]), declared)
    assert fits.dtype == np.dtype("<i4") and fits.tolist() == [1, -5, 2**31 - 1]
    with pytest.raises(corral.CorralError, match=r"cannot hold the values given \(-8589934592"):
        _oip.arrange(np.array([2**40, -2**33]), declared)
    uint8 = [{"name": "u", "datatype": "UINT8", "shape": [-1]}]
    assert _oip.arrange(np.array([0, 255]), uint8)[0][2].tolist() == [0, 255]
    with pytest.raises(corral.CorralError, match="UINT8, which cannot hold"):
        _oip.arrange(np.array([256]), uint8)
    with pytest.raises(corral.CorralError, match="UINT8, which cannot hold"):
        _oip.arrange(np.array([-1]), uint8)


def test_answers_in_json_or_binary_become_writable_arrays():
    header = json.dumps({"outputs": [
        {"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]},
        {"name": "b", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}},
    ]}).encode()
    got = _oip.response(header + np.array([0.25], "<f8").tobytes(), str(len(header)))
    np.testing.assert_array_equal(got["a"], [[1, 2], [3, 4]])
    assert got["a"].dtype == np.int32 and got["b"].tolist() == [0.25]
    got["b"][0] = 1.0
    with pytest.raises(corral.CorralError, match="not one this client understands"):
        _oip.response(b"{}", None)
