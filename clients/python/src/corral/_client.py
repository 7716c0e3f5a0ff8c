"""``Client`` (the admin API: tenants and deploys) and ``Deployment`` (a deployed model,
called over the Open Inference Protocol)."""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.parse
from typing import Any, Generator, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from . import _oip
from ._http import CorralError, Url, json_answer, refusal, send
from ._models import Prepared, Tolerance, prepare

DEFAULT_SERVER = "http://127.0.0.1:9080"
# The largest deployment config the server takes (its `config` part).
MAX_CONFIG_BYTES = 1 << 20
# Sentences per request to the text-embedding component (its own limit).
_SENTENCES_PER_REQUEST = 32
_CHUNK = 1 << 20


class Client:
    """A Corral server's admin API.

    ``server`` (``CORRAL_SERVER``, else ``http://127.0.0.1:9080``) and ``token``
    (``CORRAL_TOKEN``: the operator's, or a tenant's own) as for the ``corral`` CLI.
    ``data_plane`` sends predictions to another address than the deployment's URL (for
    example ``http://127.0.0.1:8080``) while naming the tenant's host in ``Host``: for local
    testing, and names that do not resolve. ``ca_file`` (``CORRAL_CA_FILE``) is the CA to
    trust for HTTPS (``corral-data/ca.pem`` for Corral's development CA)."""

    def __init__(self, server: Optional[str] = None, token: Optional[str] = None, *,
                 data_plane: Optional[str] = None, ca_file: Optional[str] = None,
                 timeout: float = 300.0):
        self.server = Url.parse(server or os.environ.get("CORRAL_SERVER") or DEFAULT_SERVER,
                                "server")
        if self.server.scheme != "http":
            raise CorralError(f"server '{self.server}' must be http:// (the admin API)")
        token = (token or os.environ.get("CORRAL_TOKEN") or "").strip()
        if not token:
            raise CorralError(
                "no token: pass token= or set CORRAL_TOKEN (the operator token is in the "
                "server's data directory, e.g. corral-data/admin-token)")
        self._token = token
        self.data_plane = Url.parse(data_plane, "data_plane") if data_plane else None
        self.ca_file = ca_file or os.environ.get("CORRAL_CA_FILE") or None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Client(server='{self.server}')"

    def _admin(self, method: str, path: str, body: Any = None, *, length: Optional[int] = None,
               content_type: str = "application/json") -> Any:
        headers = {"Authorization": f"Bearer {self._token}"}
        if body is not None:
            headers["Content-Type"] = content_type
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
        status, _, data = send(method, self.server, path, body=body, length=length,
                               headers=headers, timeout=self.timeout)
        return json_answer(method, path, status, data)

    def create_tenant(self, name: str, hosts: Union[str, Sequence[str]], *,
                      trusted_models: Optional[bool] = None) -> dict[str, Any]:
        """Creates (or updates) a tenant served on ``hosts``; operator only. A new tenant's
        answer has its own ``token``. ``trusted_models=True`` lets it deploy TorchScript;
        left out, an existing tenant keeps what it had."""
        update: dict[str, Any] = {"hosts": [hosts] if isinstance(hosts, str) else list(hosts)}
        if trusted_models is not None:
            update["trusted_models"] = trusted_models
        path = f"/v1/tenants/{urllib.parse.quote(name, safe='')}"
        answer: dict[str, Any] = self._admin("PUT", path, update)
        return answer

    def deploy(self, model: Any, name: str, *, tenant: Optional[str] = None,
               component: Union[str, bytes, "os.PathLike[str]", None] = None,
               builtin: Optional[str] = None, example_input: Any = None,
               config: Optional[Mapping[str, Any]] = None, rtol: float = 1e-3,
               atol: float = 1e-5, progress: Optional[bool] = None) -> "Deployment":
        """Deploys ``model`` as ``name`` to ``tenant`` (``CORRAL_TENANT``) and returns the new,
        active deployment.

        ``model`` is an ONNX file path, bytes or ``onnx.ModelProto``; a ``torch.nn.Module``
        (exported to ONNX with a dynamic batch axis by running it on ``example_input``); a
        ``torch.jit.ScriptModule`` (TorchScript, for tenants the operator trusts); a
        scikit-learn estimator or pipeline (converted by skl2onnx, its types from
        ``example_input``); or an MLflow model directory or ``models:/`` URI with an
        ``onnx``, ``pytorch`` or ``sklearn`` flavor.

        Before anything is uploaded, an exported model is run on ``example_input`` with ONNX
        Runtime and compared with the framework's own output (``numpy.allclose`` with
        ``rtol``, ``atol``); a mismatch raises ``CorralError`` naming the largest difference.

        Without ``component`` (a ``.wasm`` file or its bytes) or ``builtin`` (a built-in
        component's name), Corral's built-in ``inference`` component serves the model over
        the Open Inference Protocol. ``config`` is the deployment's JSON config (its
        ``component`` section is for the component). Upload progress shows on a terminal
        (``progress``)."""
        tenant = tenant or os.environ.get("CORRAL_TENANT")
        if not tenant:
            raise CorralError("no tenant: pass tenant= or set CORRAL_TENANT")
        if component is not None and builtin is not None:
            raise CorralError("give a component or a builtin, not both")
        if not name or any(c in name for c in '"\\\r\n/'):
            raise CorralError(f"model name {name!r} is not one a deployment can have")
        tenant = urllib.parse.quote(tenant, safe="")
        # An unknown tenant or a token that may not deploy to it, before a long export.
        self._admin("GET", f"/v1/tenants/{tenant}")
        prepared = prepare(model, example_input, Tolerance(rtol, atol))
        if component is None and builtin is None:
            builtin = prepared.builtin
        if prepared.config is not None:
            # The model's own settings, under what the caller gave.
            given = dict(config or {})
            section = dict(prepared.config.get("component", {}))
            section.update(given.get("component") or {})
            config = {**prepared.config, **given, "component": section}
        parts = [_Part(f"model.{name}", prepared.filename, prepared.data, prepared.path),
                 _Part(f"format.{name}", None, prepared.format.encode(), None)]
        if component is not None:
            if isinstance(component, (bytes, bytearray)):
                parts.append(_Part("component", "component.wasm", bytes(component), None))
            else:
                path = os.fspath(component)
                parts.append(_Part("component", os.path.basename(path), None, path))
        if config is not None:
            encoded = json.dumps(config).encode()
            if len(encoded) > MAX_CONFIG_BYTES:
                raise CorralError(
                    f"the deployment's config is {len(encoded)} bytes of JSON; Corral takes at "
                    f"most {MAX_CONFIG_BYTES}")
            parts.append(_Part("config", "config.json", encoded, None))
        if builtin is not None:
            parts.append(_Part("builtin", None, builtin.encode(), None))
        if progress is None:
            progress = sys.stderr.isatty()
        answer = self._upload(f"/v1/tenants/{tenant}/deployments", parts, progress)
        return Deployment(self, tenant, name, answer, prepared, builtin)

    def deployment(self, tenant: str, name: str, *, builtin: Optional[str] = None
                   ) -> "Deployment":
        """The tenant's active deployment, to call its model ``name`` (served by the built-in
        component ``builtin``: ``inference`` unless told otherwise)."""
        tenant = urllib.parse.quote(tenant, safe="")
        listing = self._admin("GET", f"/v1/tenants/{tenant}/deployments")
        active = listing.get("active")
        record = next((d for d in listing.get("deployments", []) if d.get("version") == active),
                      None)
        if record is None:
            raise CorralError(f"tenant '{tenant}' has no active deployment")
        answer = dict(record, urls=self._admin("GET", f"/v1/tenants/{tenant}").get("urls"))
        return Deployment(self, tenant, name, answer, None, builtin)

    def _upload(self, path: str, parts: Sequence["_Part"], progress: bool) -> Any:
        boundary = "corral-" + secrets.token_hex(16)
        pieces: list[Union[bytes, str]] = []
        for part in parts:
            disposition = f'form-data; name="{part.name}"'
            if part.filename is not None:
                safe = "".join("_" if c in '"\\\r\n' else c for c in part.filename)
                disposition += f'; filename="{safe}"'
                head = (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                        "Content-Type: application/octet-stream\r\n\r\n")
            else:
                head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n"
            pieces.append(head.encode())
            pieces.append(part.path if part.path is not None else part.data or b"")
            pieces.append(b"\r\n")
        pieces.append(f"--{boundary}--\r\n".encode())
        total = sum(os.path.getsize(p) if isinstance(p, str) else len(p) for p in pieces)
        body = _stream(pieces, total, progress and total > _CHUNK)
        try:
            return self._admin("POST", path, body, length=total,
                               content_type=f"multipart/form-data; boundary={boundary}")
        finally:
            body.close()  # and the file it was reading, if it stopped halfway


class _Part:
    def __init__(self, name: str, filename: Optional[str], data: Optional[bytes],
                 path: Optional[str]):
        self.name, self.filename, self.data, self.path = name, filename, data, path


def _stream(pieces: Sequence[Union[bytes, str]], total: int, show: bool
            ) -> Generator[bytes, None, None]:
    """The body, a megabyte at a time (files read as they are sent), with progress."""
    sent = 0
    shown = -1
    for piece in pieces:
        chunks: Iterator[bytes]
        if isinstance(piece, str):
            chunks = _file_chunks(piece)
        else:
            view = memoryview(piece)
            chunks = (bytes(view[i:i + _CHUNK]) for i in range(0, len(piece), _CHUNK))
        for chunk in chunks:
            yield chunk
            sent += len(chunk)
            percent = sent * 100 // max(total, 1)
            if show and percent != shown:
                shown = percent
                end = "\n" if sent >= total else ""
                print(f"\rcorral: uploading {sent / 1e6:.1f} / {total / 1e6:.1f} MB ({percent}%)",
                      end=end, file=sys.stderr, flush=True)


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


class Deployment:
    """A deployed model: its ``tenant``, ``version``, ``urls`` (from the server's answer) and
    ``model`` name, called over the Open Inference Protocol."""

    def __init__(self, client: Client, tenant: str, model: str, answer: Mapping[str, Any],
                 prepared: Optional[Prepared], builtin: Optional[str] = None):
        self.client = client
        # The built-in component serving it (None: the inference component, or the tenant's).
        self.builtin = builtin
        self.tenant = tenant
        self.model = model
        self.version = int(answer["version"])
        self.urls: list[str] = list(answer.get("urls") or [])
        self.models: dict[str, str] = dict(answer.get("models") or {})
        # What was checked before uploading (None when nothing could be).
        self.checked = prepared.checked if prepared is not None else None
        self._metadata: Optional[dict[str, Any]] = None

    def __repr__(self) -> str:
        url = self.urls[0] if self.urls else None
        return (f"Deployment(tenant='{self.tenant}', model='{self.model}', "
                f"version={self.version}, url={url!r})")

    @property
    def url(self) -> str:
        """Where the model answers: the first of ``urls`` (HTTPS when the server serves it)."""
        if not self.urls:
            raise CorralError(f"the server gave tenant '{self.tenant}' no URL to call it by")
        return self.urls[0]

    def _call(self, method: str, path: str, body: Any = None,
              headers: Optional[Mapping[str, str]] = None) -> tuple[int, Mapping[str, str], bytes]:
        url = Url.parse(self.url, "the deployment's URL")
        target = self.client.data_plane or url
        return send(method, target, target.join(path), body=body, headers=headers,
                    host=url.host, timeout=self.client.timeout, ca_file=self.client.ca_file)

    def _model_path(self, rest: str = "") -> str:
        return f"/v2/models/{urllib.parse.quote(self.model, safe='')}{rest}"

    def _get(self, path: str) -> Any:
        status, _, data = self._call("GET", path)
        return json_answer("GET", f"{self.url.rstrip('/')}{path}", status, data)

    def metadata(self) -> dict[str, Any]:
        """The model's Open Inference Protocol metadata: its inputs and outputs, with names,
        datatypes and shapes (``-1`` for a free axis)."""
        if self._metadata is None:
            self._metadata = self._get(self._model_path())
        return self._metadata

    def ready(self) -> bool:
        """Whether the model is loaded and serving."""
        status, _, _ = self._call("GET", self._model_path("/ready"))
        return status == 200

    def predict(self, inputs: Any, outputs: Optional[Sequence[str]] = None
                ) -> dict[str, np.ndarray]:
        """Runs the model: ``inputs`` is one array (a model with one input), a dict of arrays
        by input name, or a sequence in the model's order. Arrays are cast to the datatypes
        the model declares when nothing but precision changes (float64 to FP32; integers
        when every value fits). Returns the outputs (or those named in ``outputs``) by name,
        as numpy arrays.

        Served by the text-embedding component (a transformers feature-extraction pipeline),
        ``inputs`` is a list of sentences and the answer ``{"embeddings": ...}`` (one
        normalized row per sentence) and ``{"similarity": ...}`` (their cosines)."""
        if self.builtin == "text-embedding":
            return self._embed(inputs)
        tensors = _oip.arrange(inputs, self.metadata()["inputs"])
        header, raw = _oip.request(tensors, outputs)
        body = header + b"".join(raw)
        path = self._model_path("/infer")
        status, headers, data = self._call("POST", path, body, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        })
        if status != 200:
            raise refusal("POST", f"{self.url.rstrip('/')}{path}", status, data)
        return _oip.response(data, headers.get("inference-header-content-length"))

    def _embed(self, sentences: Any) -> dict[str, np.ndarray]:
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        rows: list[list[float]] = []
        for start in range(0, len(sentences), _SENTENCES_PER_REQUEST):
            batch = sentences[start:start + _SENTENCES_PER_REQUEST]
            body = json.dumps({"sentences": batch}).encode()
            status, _, data = self._call("POST", "/", body, {"Content-Type": "application/json"})
            rows.extend(json_answer("POST", self.url, status, data)["embeddings"])
        embeddings = np.asarray(rows, dtype=np.float32)
        return {"embeddings": embeddings, "similarity": embeddings @ embeddings.T}
