"""Shared helpers for the flasher tests: images with a marker, a local HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_jumpstarter.driver import DeviceContext, Driver

MIB = 1024 * 1024


def make_image(path: Path, size: int, data_at: dict[int, bytes]) -> bytes:
    """A sparse raw image of ``size`` bytes with ``data_at`` written at their offsets; returns its bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in data_at.items():
            f.seek(offset)
            f.write(data)
    return path.read_bytes()


def context(
    name: str, driver: type[Driver[Any]], settings: dict[str, Any], tmp_path: Path, **extra: Any
) -> DeviceContext[Any]:
    """A context whose settings ``driver`` built from ``settings`` as the target loader would."""
    lines: list[str] = []
    raw = {key: str(value) if isinstance(value, Path) else value for key, value in settings.items()}
    typed = driver.settings_from(raw, tmp_path)
    ctx = DeviceContext(name=name, target="test-target", settings=typed, workdir=tmp_path, **extra)
    ctx.progress = lines.append
    ctx.extra["progress_lines"] = lines
    return ctx


class _Handler(http.server.SimpleHTTPRequestHandler):
    #: Files whose body is cut short after this many bytes (Content-Length stays the full size).
    truncate: dict[str, int] = {}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        cut = self.server.truncate.get(name)  # type: ignore[attr-defined]
        if cut is None:
            super().do_GET()
            return
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:cut])
        self.wfile.flush()
        self.close_connection = True


class HttpServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.truncate = {}  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-http", daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def truncate(self, name: str, after: int) -> None:
        self.httpd.truncate[name] = after  # type: ignore[attr-defined]


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HttpServer]:
    root = tmp_path / "www"
    root.mkdir()
    server = HttpServer(root)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=10)
    # Nothing is left listening on the port.
    with contextlib.closing(__import__("socket").socket()) as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0


@pytest.fixture
def marker() -> bytes:
    return b"JUMPSTARTER-MARKER-" + os.urandom(8).hex().encode()
