"""A real `corral serve` for the tests: its own data directory, free ports, the operator
token it wrote, and its log (printed when a test fails)."""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import corral

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Server:
    admin: str
    data_plane: str
    https: str
    token: str
    ca_file: str
    log: Path

    def client(self, **options) -> corral.Client:
        return corral.Client(self.admin, self.token, **options)


def _binary() -> str:
    binary = os.environ.get("CORRAL_BIN")
    if binary:
        return binary
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidate = target / "debug" / "corral"
    if not candidate.exists():
        pytest.fail(f"no corral binary at {candidate}: run `cargo xtask pytest` (it builds one), "
                    "or set CORRAL_BIN")
    return str(candidate)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("corral")
    log = root / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_ADMIN_TOKEN"}
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [_binary(), "serve", "--data", str(root / "data"), "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    found: dict[str, str] = {}
    assert process.stdout is not None
    # A server that never gets as far as its token is stopped rather than waited on forever.
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    for line in process.stdout:
        for key, prefix in (("data", "corral: serving tenants on http://"),
                            ("https", "corral: serving tenants on https://"),
                            ("admin", "corral: admin API on http://"),
                            ("token", "corral: operator token in ")):
            if line.startswith(prefix):
                found[key] = line[len(prefix):].strip()
        if "token" in found:
            break
    watchdog.cancel()
    if "token" not in found:
        process.kill()
        process.wait()
        pytest.fail(f"corral serve did not start:\n{log.read_text()}")
    # Keep reading what it prints, so that it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    yield Server(
        admin=f"http://{found['admin']}",
        data_plane=f"http://{found['data']}",
        https=found["https"],
        token=Path(found["token"]).read_text().strip(),
        ca_file=str(root / "data" / "ca.pem"),
        log=log,
    )
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("server") if hasattr(item, "funcargs") else None
    if report.failed and server is not None:
        report.sections.append(("corral serve log (tail)", server.log.read_text()[-4000:]))
