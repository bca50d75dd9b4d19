"""How bytes reach a board and come back: over SSH, by HTTP through user networking, or over the console.

Each channel moves one file (a folder travels as a tar file, see :mod:`.files`) and reports progress
as it goes; none of them checks what arrived: :mod:`.files` does that, with a checksum computed on
the board, whatever the channel.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import itertools
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, ClassVar, Protocol, runtime_checkable

from pytest_jumpstarter.console import Console, RunResult
from pytest_jumpstarter.errors import ConsoleTimeout, TransferError

from .client import quote

#: Called with the bytes moved so far.
Progress = Callable[[int], None]

_BLOCK = 1 << 20


class Shell(Protocol):
    """Something that runs a shell command on the board (a console, or an SSH shell)."""

    def run(self, command: str, timeout: float | None = None) -> RunResult: ...


@runtime_checkable
class SshSession(Protocol):
    """What ``files`` needs of an ``ssh`` device: commands, and sessions whose stdin or stdout is a
    byte stream (``stream("cat > f", write=True)``).  Driver ``ssh`` provides it."""

    def run(self, command: str, timeout: float | None = None) -> RunResult: ...
    def stream(self, command: str, *, write: bool) -> AbstractContextManager[IO[bytes]]: ...


class Channel:
    """One way to move a file between this host and the board."""

    name: ClassVar[str] = ""

    def __init__(self, device: str) -> None:
        self.device = device

    def send(self, local: Path, remote: str, progress: Progress) -> None:
        raise NotImplementedError

    def receive(self, remote: str, local: Path, progress: Progress) -> None:
        raise NotImplementedError

    def chunks(self, local: Path) -> Iterator[bytes]:
        """The bytes of ``local`` as sent (the one place a test can tamper with a transfer)."""
        with open(local, "rb") as f:
            while block := f.read(_BLOCK):
                yield block


class SshChannel(Channel):
    """``cat`` in an SSH session, its stdin or stdout being the file: scp's speed, with progress."""

    name = "ssh"

    def __init__(self, device: str, ssh: SshSession) -> None:
        super().__init__(device)
        self.ssh = ssh

    def send(self, local: Path, remote: str, progress: Progress) -> None:
        done = 0
        with self.ssh.stream(f"cat > {quote(remote)}", write=True) as pipe:
            for block in self.chunks(local):
                pipe.write(block)
                done += len(block)
                progress(done)

    def receive(self, remote: str, local: Path, progress: Progress) -> None:
        done = 0
        with self.ssh.stream(f"cat {quote(remote)}", write=False) as pipe, open(local, "wb") as out:
            while block := pipe.read1(_BLOCK) if hasattr(pipe, "read1") else pipe.read(_BLOCK):
                out.write(block)
                done += len(block)
                progress(done)


class HttpChannel(Channel):
    """The board's ``wget`` against a one-transfer HTTP server on this host's loopback.

    On user (slirp) networking the guest reaches the host's 127.0.0.1 at ``host_address``
    (10.0.2.2), so the server never listens beyond loopback.  ``get`` goes the other way as a plain
    TCP upload (the board's ``nc`` into a one-connection listener here): BusyBox's ``wget
    --post-file`` sends a file as a C string, cut at its first NUL byte.
    """

    name = "http"

    def __init__(self, device: str, shell: Shell, host_address: str, rate: float) -> None:
        super().__init__(device)
        self.shell = shell
        self.host_address = host_address
        #: Bytes per second assumed for a transfer's deadline (a slow board gets the time it needs).
        self.rate = rate

    def probe(self) -> str | None:
        """None if the board can fetch from us, else why not (for the fallback note)."""
        with _OneShot(lambda: iter([b"jumpstarter-probe\n"]), lambda n: None) as server:
            # timeout(1), not wget -T: Debian's busybox-static 1.35 wget segfaults with -T.
            url = server.url(self.host_address)
            result = self.shell.run(f"timeout 10 wget -q -O - {url} 2>&1", timeout=15.0)
        if result.ok and "jumpstarter-probe" in result.output:
            return None
        said = result.output.strip()[-200:] or f"status {result.status}"
        return f"the board's wget could not reach {self.host_address}: {said}"

    def send(self, local: Path, remote: str, progress: Progress) -> None:
        size = local.stat().st_size
        with _OneShot(lambda: self.chunks(local), progress, size) as server:
            result = self.shell.run(
                f"wget -q -O {quote(remote)} {server.url(self.host_address)} 2>&1",
                timeout=self._deadline(size),
            )
        if not result.ok:
            raise TransferError(self.device, f"wget of {local.name} into {remote} failed: {result.output}")

    def receive(self, remote: str, local: Path, progress: Progress) -> None:
        size = _remote_size(self.shell, remote, self.device)
        deadline = self._deadline(size)
        with _Upload(local, size, progress) as upload:
            result = self.shell.run(
                f"timeout {int(deadline)} nc {self.host_address} {upload.port} < {quote(remote)} 2>&1",
                timeout=deadline + 5,
            )
        if upload.received != size:
            raise TransferError(
                self.device,
                f"upload of {remote} stopped after {upload.received} of {size} bytes:"
                f" {result.output.strip()}",
            )

    def _deadline(self, size: int) -> float:
        return 30.0 + size / self.rate


class ConsoleChannel(Channel):
    """base64 over the serial console, in acknowledged chunks so no tty buffer can overflow.

    ``put``: echo off, then per chunk ``head -c N | base64 -d >> file`` reads exactly the chunk's
    text; a marker after it says it was written.  ``get``: ``dd | base64`` per chunk.
    """

    name = "console"
    chunk = 192 * 1024
    _ids = itertools.count(1)

    def __init__(self, device: str, console: Console, rate: float) -> None:
        super().__init__(device)
        self.console = console
        self.rate = rate

    def send(self, local: Path, remote: str, progress: Progress) -> None:
        console = self.console
        console.run(f": > {quote(remote)}", timeout=10.0).check()
        done = 0
        pending = b""
        for block in self.chunks(local):
            pending += block
            while len(pending) >= self.chunk:
                self._send_chunk(pending[: self.chunk], remote)
                done += self.chunk
                pending = pending[self.chunk :]
                progress(done)
        if pending:
            self._send_chunk(pending, remote)
            progress(done + len(pending))

    def _send_chunk(self, data: bytes, remote: str) -> None:
        console = self.console
        text = base64.encodebytes(data)  # 76-character lines: far below the tty's 4096-byte line limit
        token = f"{next(self._ids)}x{secrets.token_hex(3)}"
        console.sendline(
            f"stty -echo; printf '\\036R{token}\\036\\n'; head -c {len(text)} | base64 -d >> {quote(remote)};"
            f" printf '\\036D{token}:%d\\036\\n' $?; stty echo"
        )
        timeout = 10.0 + len(text) / self.rate
        try:
            console.expect(re.compile(f"\x1eR{token}\x1e\r?\n"), timeout=10.0)
            console.send(text)
            console.expect(re.compile(f"\x1eD{token}:(-?\\d+)\x1e"), timeout=timeout)
        except ConsoleTimeout as exc:
            raise TransferError(
                self.device, f"console transfer into {remote} stalled (chunk of {len(data)} bytes): {exc}"
            ) from exc
        if console.match.group(1) != "0":
            raise TransferError(
                self.device, f"writing {remote} on the board failed: {console.before.strip()}"
            )

    def receive(self, remote: str, local: Path, progress: Progress) -> None:
        size = _remote_size(self.console, remote, self.device)
        done = 0
        with open(local, "wb") as out:
            for index in range((size + self.chunk - 1) // self.chunk):
                result = self.console.run(
                    f"dd if={quote(remote)} bs={self.chunk} skip={index} count=1 2>/dev/null | base64",
                    timeout=10.0 + 1.4 * self.chunk / self.rate,
                )
                result.check()
                block = base64.b64decode("".join(result.output.split()))
                out.write(block)
                done += len(block)
                progress(done)


def _remote_size(shell: Shell, remote: str, device: str) -> int:
    result = shell.run(f"wc -c < {quote(remote)}", timeout=30.0)
    if not result.ok or not result.output.strip().isdigit():
        raise TransferError(device, f"cannot read {remote} on the board: {result.output.strip()}")
    return int(result.output.strip())


class _Upload:
    """A listener on 127.0.0.1 that takes one connection and writes its first ``size`` bytes to ``local``."""

    def __init__(self, local: Path, size: int, progress: Progress) -> None:
        self.local, self.size, self.progress = local, size, progress
        self.received = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._take, daemon=True)

    def _take(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # closed: the board never connected
        with conn, open(self.local, "wb") as out:
            while self.received < self.size:
                block = conn.recv(min(_BLOCK, self.size - self.received))
                if not block:
                    break
                out.write(block)
                self.received += len(block)
                self.progress(self.received)
        # Closing here is what ends the board's nc (it does not quit at the end of its input).

    def __enter__(self) -> _Upload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(10.0)


class _OneShot:
    """An HTTP server on 127.0.0.1 for one transfer: GET serves ``source``.

    The path is a random token, so nothing but the transfer it was made for fetches from it.
    """

    def __init__(
        self, source: Callable[[], Iterator[bytes]], progress: Progress, size: int | None = None
    ) -> None:
        self.token = secrets.token_hex(8)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != f"/{owner.token}":
                    self.send_error(404)
                    return
                self.send_response(200)
                if size is not None:
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                done = 0
                for block in source():
                    self.wfile.write(block)
                    done += len(block)
                    progress(done)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}/{self.token}"

    def __enter__(self) -> _OneShot:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5.0)


__all__ = ["Channel", "ConsoleChannel", "HttpChannel", "SshChannel", "SshSession"]
