"""What ``deploy`` accepts as a model, made into a file Corral serves: ONNX (from a file,
bytes, an ``onnx.ModelProto``, a ``torch.nn.Module``, a scikit-learn estimator or an MLflow
model) or TorchScript (a ``torch.jit.ScriptModule``). An exported model is run on the example
input with ONNX Runtime and compared with the framework's own output before it is uploaded."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from . import _oip
from ._http import CorralError

ONNX = "onnx"
TORCHSCRIPT = "pytorch"  # as the server names the format

# The tensor element types Corral's wasi:nn carries, by ONNX TensorProto number.
_CARRIED = {1: "FP32", 2: "UINT8", 6: "INT32", 7: "INT64", 10: "FP16", 11: "FP64", 16: "BF16"}


@dataclass
class Prepared:
    """A model ready to upload: its bytes (or the file that has them) and its format."""

    format: str
    data: Optional[bytes] = None
    path: Optional[str] = None
    # What was checked before uploading, for the user: e.g. "largest difference 1.2e-07".
    checked: Optional[str] = None
    # The built-in component that serves this kind of model, and the config it needs (a
    # Hugging Face feature-extraction pipeline: text-embedding, with its vocabulary).
    builtin: Optional[str] = None
    config: Optional[dict[str, Any]] = None

    @property
    def filename(self) -> str:
        if self.path is not None:
            return os.path.basename(self.path)
        return "model.pt" if self.format == TORCHSCRIPT else "model.onnx"


@dataclass(frozen=True)
class Tolerance:
    """How far an exported model's output may be from the framework's (``numpy.allclose``)."""

    rtol: float
    atol: float


def _module(name: str) -> Any:
    """A framework module, only when the caller has imported it (its objects can exist only
    then): deploying an ONNX file never imports torch."""
    return sys.modules.get(name)


def _needs(package: str, extra: str) -> CorralError:
    return CorralError(f"this needs {package}: pip install 'corral-client[{extra}]'")


def _sniff(data: bytes) -> str:
    # TorchScript archives are zip files; ONNX is a protobuf.
    return TORCHSCRIPT if data[:4] == b"PK\x03\x04" else ONNX


def prepare(model: Any, example_input: Any, tolerance: Tolerance) -> Prepared:
    """Turns what ``deploy`` was given into an upload, exporting and checking it."""
    if isinstance(model, (str, os.PathLike)):
        location = os.fspath(model)
        if "://" in location or location.startswith(("models:/", "runs:/")) or (
                os.path.isdir(location)):
            return _from_mlflow(location, example_input, tolerance)
        try:
            with open(location, "rb") as f:
                head = f.read(4)
        except OSError as e:
            raise CorralError(f"cannot read the model {location}: {e.strerror}") from None
        prepared = Prepared(_sniff(head), path=location)
        if prepared.format == ONNX:
            _check_onnx(location, example_input, None, tolerance, prepared)
        return prepared
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        prepared = Prepared(_sniff(data), data=data)
        if prepared.format == ONNX:
            _check_onnx(data, example_input, None, tolerance, prepared)
        return prepared
    onnx = _module("onnx")
    if onnx is not None and isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
        prepared = Prepared(ONNX, data=data)
        _check_onnx(data, example_input, None, tolerance, prepared)
        return prepared
    torch = _module("torch")
    if torch is not None and isinstance(model, torch.jit.ScriptModule):
        return _from_torchscript(torch, model, example_input, tolerance)
    if torch is not None and isinstance(model, torch.nn.Module):
        return _from_torch(torch, model, example_input, tolerance)
    transformers = _module("transformers")
    if transformers is not None and isinstance(model, transformers.Pipeline):
        return _from_transformers(torch, model, example_input, tolerance)
    sklearn = _module("sklearn.base")
    if sklearn is not None and isinstance(model, sklearn.BaseEstimator):
        return _from_sklearn(model, example_input, tolerance)
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    raise CorralError(
        f"cannot deploy a {kind}: Corral takes an ONNX file, bytes or onnx.ModelProto, a "
        "torch.nn.Module, a torch.jit.ScriptModule, a scikit-learn estimator or pipeline, or "
        "an MLflow model (a directory with an MLmodel file, or a models:/ URI)")


def _as_tuple(example_input: Any) -> tuple[Any, ...]:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _outputs_of(value: Any) -> list[np.ndarray]:
    """A framework's output as a flat list of arrays."""
    if isinstance(value, dict):
        return [np.asarray(_numpy(v)) for v in value.values()]
    if isinstance(value, (tuple, list)):
        return [np.asarray(_numpy(v)) for v in value]
    return [np.asarray(_numpy(value))]


def _numpy(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    return detach().cpu().numpy() if detach is not None else value


def _from_torch(torch: Any, module: Any, example_input: Any, tolerance: Tolerance,
                free_axes: Sequence[int] = (0,)) -> Prepared:
    if example_input is None:
        raise CorralError(
            f"a torch.nn.Module ({type(module).__name__}) is exported to ONNX by running it: "
            "pass example_input= (a batch of inputs, or a tuple of them for several)")
    if _module("onnxscript") is None:
        try:
            import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
        except ImportError:
            raise _needs("onnxscript (torch's ONNX exporter uses it)", "torch") from None
    args = tuple(torch.as_tensor(a) for a in _as_tuple(example_input))
    # Exported for inference (dropout off, batch norm frozen); the caller's module is left
    # in the mode it was in.
    training = module.training
    module.eval()
    try:
        return _export_torch(torch, module, args, tolerance, free_axes)
    finally:
        module.train(training)


def _export_torch(torch: Any, module: Any, args: tuple[Any, ...], tolerance: Tolerance,
                  free_axes: Sequence[int]) -> Prepared:
    with torch.no_grad():
        expected = module(*args)
    if isinstance(expected, dict):
        output_names = [str(k) for k in expected]
    elif isinstance(expected, (tuple, list)):
        output_names = [f"output{i}" for i in range(len(expected))]
    else:
        output_names = ["output"]
    # The first axis of every input is the batch, of any size (and so are the others named).
    free = {axis: torch.export.Dim(f"axis{axis}" if axis else "batch") for axis in free_axes}
    with tempfile.TemporaryDirectory(prefix="corral-export-") as scratch:
        path = os.path.join(scratch, "model.onnx")
        try:
            torch.onnx.export(module, args, path, dynamo=True, external_data=False,
                              dynamic_shapes=tuple(free for _ in args),
                              output_names=output_names, verbose=False)
        except Exception as e:  # noqa: BLE001  (the exporter raises many kinds; all mean one thing)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CorralError(
                f"torch.onnx.export cannot export this {type(module).__name__} to ONNX: {first}"
            ) from e
        with open(path, "rb") as f:
            data = f.read()
    prepared = Prepared(ONNX, data=data)
    _check_onnx(data, tuple(a.numpy() for a in args), _outputs_of(expected), tolerance,
                prepared)
    return prepared


def _from_torchscript(torch: Any, module: Any, example_input: Any,
                      tolerance: Tolerance) -> Prepared:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    data = buffer.getvalue()
    prepared = Prepared(TORCHSCRIPT, data=data)
    if example_input is not None:
        # What Corral will load is the saved archive: load it back and run both.
        args = tuple(torch.as_tensor(a) for a in _as_tuple(example_input))
        loaded = torch.jit.load(io.BytesIO(data))
        with torch.no_grad():
            expected = _outputs_of(module(*args))
            got = _outputs_of(loaded(*args))
        prepared.checked = _compare(expected, got, [f"output{i}" for i in range(len(got))],
                                    tolerance, "the saved TorchScript")
    return prepared


# The text-embedding component's tokenizer: BERT's uncased WordPiece, [CLS] ... [SEP], padded.
_WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
# The sequence the text-embedding component builds, at most (the model's own limit if less).
_TEXT_SEQ = 128


def _from_transformers(torch: Any, pipeline: Any, example_input: Any,
                       tolerance: Tolerance) -> Prepared:
    """A feature-extraction pipeline of a BERT-style encoder with an uncased WordPiece
    tokenizer: the encoder exported to ONNX (batch and sequence free), served by the built-in
    text-embedding component with the tokenizer's vocabulary in its config."""
    task = getattr(pipeline, "task", None)
    if task != "feature-extraction":
        raise CorralError(
            f"a transformers '{task}' pipeline is not one Corral serves yet: it takes "
            "'feature-extraction' pipelines (sentence embeddings, the text-embedding component)")
    if torch is None or not isinstance(pipeline.model, torch.nn.Module):
        raise CorralError("the pipeline's model is not a PyTorch model")
    tokenizer = pipeline.tokenizer
    vocabulary = tokenizer.get_vocab() if tokenizer is not None else {}
    ids = sorted(vocabulary.values())
    wordpiece = (getattr(tokenizer, "do_lower_case", False)
                 and all(t in vocabulary for t in _WORDPIECE_SPECIALS)
                 and ids == list(range(len(ids))))
    if not wordpiece:
        raise CorralError(
            f"the pipeline's tokenizer ({type(tokenizer).__name__}) is not an uncased BERT "
            "WordPiece one with [PAD], [UNK], [CLS] and [SEP]: Corral's text-embedding "
            "component tokenizes that way only")
    sentences = example_input if example_input is not None else [
        "Corral serves many tenants' models.", "A short one."]
    if isinstance(sentences, str):
        sentences = [sentences]
    encoded = tokenizer(list(sentences), padding=True, return_tensors="pt")

    class Encoder(torch.nn.Module):  # type: ignore[misc]
        """The encoder's token vectors only (what the component pools)."""

        def __init__(self, model: Any):
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids,
                              attention_mask=attention_mask).last_hidden_state

    encoder = Encoder(pipeline.model)
    encoder.train(pipeline.model.training)  # so that the model's own mode is what is restored
    prepared = _from_torch(torch, encoder,
                           (encoded["input_ids"], encoded["attention_mask"]), tolerance,
                           free_axes=(0, 1))
    limit = getattr(pipeline.model.config, "max_position_embeddings", _TEXT_SEQ)
    prepared.builtin = "text-embedding"
    prepared.config = {"component": {
        "vocab": [token for token, _ in sorted(vocabulary.items(), key=lambda kv: kv[1])],
        "seq": min(int(limit), _TEXT_SEQ),
        "output": "output",
    }}
    return prepared


def _from_sklearn(estimator: Any, example_input: Any, tolerance: Tolerance) -> Prepared:
    try:
        from skl2onnx import to_onnx
    except ImportError:
        raise _needs("skl2onnx", "sklearn") from None
    if example_input is None:
        raise CorralError(
            f"a scikit-learn {type(estimator).__name__} is converted to ONNX from the types of "
            "example_input: pass example_input= (a few rows, as the estimator takes them)")
    rows = np.asarray(getattr(example_input, "to_numpy", lambda: example_input)())
    if rows.dtype.kind == "f":
        # ONNX's scikit-learn operators compute in float32.
        rows = rows.astype(np.float32)
    try:
        # zipmap off: a classifier's probabilities as a plain tensor, not a sequence of maps.
        model = to_onnx(estimator, rows, options={"zipmap": False}, target_opset=None)
    except Exception as e:  # noqa: BLE001  (skl2onnx raises many kinds; all mean the same)
        raise CorralError(
            f"skl2onnx cannot convert this {type(estimator).__name__} to ONNX: {e}") from e
    expected = []
    if hasattr(estimator, "predict"):
        expected.append(np.asarray(estimator.predict(rows)))
    if hasattr(estimator, "predict_proba"):
        expected.append(np.asarray(estimator.predict_proba(rows)))
    elif hasattr(estimator, "transform") and not hasattr(estimator, "predict"):
        expected.append(np.asarray(estimator.transform(rows)))
    data = model.SerializeToString()
    prepared = Prepared(ONNX, data=data)
    _check_onnx(data, (rows,), expected, tolerance, prepared)
    return prepared


def _from_mlflow(location: str, example_input: Any, tolerance: Tolerance) -> Prepared:
    directory = location
    if not os.path.isdir(location):
        try:
            import mlflow.artifacts
        except ImportError:
            raise _needs(f"mlflow to fetch {location}", "mlflow") from None
        directory = mlflow.artifacts.download_artifacts(artifact_uri=location)
    mlmodel = os.path.join(directory, "MLmodel")
    if not os.path.isfile(mlmodel):
        raise CorralError(
            f"{location} is a directory without an MLmodel file: give a model file, or an "
            "MLflow model directory")
    try:
        import yaml
    except ImportError:
        raise _needs("PyYAML to read MLmodel files", "mlflow") from None
    with open(mlmodel, encoding="utf-8") as f:
        spec = yaml.safe_load(f) or {}
    flavors = spec.get("flavors") or {}
    if example_input is None and spec.get("saved_input_example_info"):
        import mlflow.models

        example_input = mlflow.models.Model.load(directory).load_input_example(directory)
        example_input = getattr(example_input, "to_numpy", lambda: example_input)()
    if "onnx" in flavors:
        data_file = flavors["onnx"].get("data")
        if not isinstance(data_file, str):
            raise CorralError(f"{mlmodel}: flavors.onnx has no 'data' file name")
        return prepare(os.path.join(directory, data_file), example_input, tolerance)
    if "pytorch" in flavors:
        try:
            import mlflow.pytorch
        except ImportError:
            raise _needs("mlflow", "mlflow") from None
        return prepare(mlflow.pytorch.load_model(directory, map_location="cpu"), example_input,
                       tolerance)
    if "sklearn" in flavors:
        try:
            import mlflow.sklearn
        except ImportError:
            raise _needs("mlflow", "mlflow") from None
        return prepare(mlflow.sklearn.load_model(directory), example_input, tolerance)
    raise CorralError(
        f"{mlmodel}: the model's flavors are {sorted(flavors)}; Corral takes onnx, pytorch or "
        "sklearn")


def _check_onnx(model: Any, inputs: Any, expected: Optional[Sequence[np.ndarray]],
                tolerance: Tolerance, prepared: Prepared) -> None:
    """Loads the model in ONNX Runtime, checks that every input and output is a tensor Corral
    carries and, given inputs, runs it (comparing with ``expected`` when there is one)."""
    try:
        import onnxruntime
    except ImportError:
        if inputs is None and expected is None:
            return  # nothing to run: the server checks the model when it loads it
        raise _needs("onnxruntime to check the exported model", "onnx") from None
    try:
        session = onnxruntime.InferenceSession(
            model, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (ONNX Runtime's errors have no common base)
        raise CorralError(f"ONNX Runtime cannot load the model: {e}") from None
    for kind, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for arg in args:
            if not (arg.type.startswith("tensor(") and _tensor_type(arg.type) is not None):
                raise CorralError(
                    f"the model's {kind} '{arg.name}' is {arg.type}: Corral carries tensors of "
                    "float16, bfloat16, float, double, uint8, int32 and int64 (a classifier "
                    "with string labels needs integer labels)")
    if inputs is None:
        return
    # As predict sends them: by name, in order or alone, each cast to the input's datatype.
    declared = [{"name": arg.name, "datatype": _tensor_type(arg.type)}
                for arg in session.get_inputs()]
    if isinstance(inputs, tuple) and len(inputs) == 1 and len(declared) == 1:
        inputs = inputs[0]
    feeds = {name: array for name, _, array in _oip.arrange(inputs, declared)}
    names = [o.name for o in session.get_outputs()]
    try:
        got = session.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        raise CorralError(f"ONNX Runtime cannot run the model on example_input: {e}") from None
    if expected is None:
        prepared.checked = "runs in ONNX Runtime on example_input"
        return
    prepared.checked = _compare(expected, got, names, tolerance, "the exported ONNX model")


def _tensor_type(onnx_type: str) -> Optional[str]:
    names = {"tensor(float)": "FP32", "tensor(uint8)": "UINT8", "tensor(int32)": "INT32",
             "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(double)": "FP64",
             "tensor(bfloat16)": "BF16"}
    return names.get(onnx_type)


def _compare(expected: Sequence[np.ndarray], got: Sequence[Any], names: Sequence[str],
             tolerance: Tolerance, what: str) -> str:
    """Checks outputs pairwise; the message names the output and the largest difference."""
    if len(expected) > len(got):
        raise CorralError(
            f"{what} has {len(got)} outputs ({list(names)}) but the framework gives "
            f"{len(expected)}")
    largest = 0.0
    for name, want, have in zip(names, expected, got):
        want, have = np.asarray(want), np.asarray(have)
        if want.shape != have.shape:
            raise CorralError(
                f"{what} does not match the framework: output '{name}' has shape "
                f"{list(have.shape)}, the framework's {list(want.shape)}")
        if want.size == 0:
            continue
        if want.dtype.kind not in "fciub" or have.dtype.kind not in "fciub":
            if not np.array_equal(want, have):
                raise CorralError(f"{what} does not match the framework on output '{name}'")
            continue
        difference = np.abs(want.astype(np.float64) - have.astype(np.float64))
        worst = int(np.argmax(difference))
        largest = max(largest, float(difference.flat[worst]))
        if not np.allclose(have, want, rtol=tolerance.rtol, atol=tolerance.atol):
            index = tuple(int(i) for i in np.unravel_index(worst, want.shape))
            raise CorralError(
                f"{what} does not match the framework: output '{name}' differs by up to "
                f"{difference.flat[worst]:.6g} (at {list(index)}: {have.flat[worst]!r} where "
                f"the framework gives {want.flat[worst]!r}; rtol={tolerance.rtol}, "
                f"atol={tolerance.atol})")
    return f"matches the framework on example_input (largest difference {largest:.3g})"
