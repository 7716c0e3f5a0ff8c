"""HTTP for the client, on the standard library: the admin API (JSON, a bearer token) and the
data plane (a tenant's host name in ``Host`` and, over TLS, in SNI, wherever the request is
sent)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Union

Body = Union[bytes, Iterable[bytes], None]


class CorralError(Exception):
    """Something Corral refused, or could not be asked.

    ``status`` is the HTTP status (``None`` when no answer came), ``code`` the server's error
    code when it gave one (``not_found``, ``payload_too_large``, ...), ``message`` what it
    said."""

    def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Url:
    """``scheme://host:port/path``, split."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str, what: str) -> "Url":
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CorralError(f"{what} '{url}' must look like http://127.0.0.1:9080")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise CorralError(f"{what} '{url}': {e}") from None
        return cls(parts.scheme, parts.hostname, port, parts.path or "/")

    def join(self, path: str) -> str:
        """This URL's path with ``path`` (which starts with ``/``) appended."""
        return self.path.rstrip("/") + path

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


class _TlsConnection(http.client.HTTPSConnection):
    """HTTPS to one address while asking (SNI) and verifying another name."""

    def __init__(self, address: str, port: int, server_name: str, context: ssl.SSLContext,
                 timeout: float):
        super().__init__(address, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._tls = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


def _address(host: str) -> str:
    # RFC 6761: every name under .localhost is loopback (curl and browsers agree; the system
    # resolver often does not).
    if host == "localhost" or host.endswith(".localhost"):
        return "127.0.0.1"
    return host


def send(
    method: str,
    target: Url,
    path: str,
    *,
    body: Body = None,
    length: Optional[int] = None,
    headers: Optional[Mapping[str, str]] = None,
    host: Optional[str] = None,
    timeout: float,
    ca_file: Optional[str] = None,
) -> tuple[int, Mapping[str, str], bytes]:
    """Sends one request to ``target`` (its address and port) for ``path``, naming ``host``
    (default: the target's) in ``Host`` and SNI. Returns the status, headers and body."""
    name = host or target.host
    address = _address(target.host)
    where = f"{target.scheme}://{name}:{target.port}{path}"
    try:
        if target.scheme == "https":
            context = ssl.create_default_context()
            if ca_file:
                # As well as the system's CAs, not instead of them.
                context.load_verify_locations(cafile=ca_file)
            connection: http.client.HTTPConnection = _TlsConnection(
                address, target.port, name, context, timeout)
        else:
            connection = http.client.HTTPConnection(address, target.port, timeout=timeout)
        all_headers = {"Host": name if target.port in (80, 443) else f"{name}:{target.port}"}
        all_headers.update(headers or {})
        if length is not None:
            all_headers["Content-Length"] = str(length)
        try:
            try:
                connection.request(method, path, body=body, headers=all_headers)
            except (BrokenPipeError, ConnectionResetError):
                # The server may answer before it has read the body (a bad token, an unknown
                # tenant, an upload over its limit) and close: its answer says why.
                pass
            response = connection.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            connection.close()
    except ssl.SSLCertVerificationError as e:
        raise CorralError(
            f"{method} {where}: the server's certificate is not trusted ({e.verify_message}); "
            "pass ca_file= (corral-data/ca.pem for Corral's development CA) or set "
            "CORRAL_CA_FILE") from None
    except (TimeoutError, socket.timeout):
        raise CorralError(f"{method} {where}: no answer within {timeout} s") from None
    except ConnectionRefusedError as e:
        raise CorralError(
            f"cannot reach {target.scheme}://{address}:{target.port} for {method} {path} "
            f"(is `corral serve` running there?): {e}") from None
    except (OSError, http.client.HTTPException) as e:
        raise CorralError(f"{method} {where} failed: {type(e).__name__}: {e}") from None


def refusal(method: str, where: str, status: int, data: bytes) -> CorralError:
    """The error for an answer that is not a success: Corral's ``{"error": {"code",
    "message"}}`` or the Open Inference Protocol's ``{"error": "..."}``."""
    code = None
    try:
        error = json.loads(data)["error"]
        if isinstance(error, dict):
            code = str(error.get("code", "error"))
            message = str(error.get("message", "(no message)"))
        else:
            message = str(error)
    except (ValueError, KeyError, TypeError):
        message = data[:500].decode("utf-8", "replace") or "(no body)"
    detail = f"{code}: {message}" if code else message
    return CorralError(f"{method} {where}: {status} {detail}", status=status, code=code)


def json_answer(method: str, where: str, status: int, data: bytes) -> Any:
    """The JSON of a successful answer, or the error it carries."""
    if not 200 <= status < 300:
        raise refusal(method, where, status, data)
    try:
        return json.loads(data)
    except ValueError:
        raise CorralError(f"{method} {where}: the answer ({status}) is not JSON",
                          status=status) from None
