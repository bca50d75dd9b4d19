"""Small servers to point a tunnel at: TCP echo, TCP discard-and-count, UDP echo.

Run as ``python -m pytest_jumpstarter_network.testing.echo_server --host 10.0.0.2`` (inside a network
namespace, say, with ``ip netns exec``).  It prints one line ``READY echo=P count=P udp=P`` once every
socket listens, then serves until killed or until its stdin closes (so it dies with its parent).

- echo (TCP): sends back what it receives; on end of stream it shuts its side down too, so a
  half-close travels back.
- count (TCP): reads until end of stream, then answers the number of bytes it read, in ASCII.
- udp: sends each datagram back to its sender.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType


def _echo(conn: socket.socket) -> None:
    with conn:
        try:
            while data := conn.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client reset the connection: nothing to answer


def _count(conn: socket.socket) -> None:
    buf = bytearray(1 << 20)
    total = 0
    with conn:
        try:
            while n := conn.recv_into(buf):
                total += n
            conn.sendall(str(total).encode())
        except OSError:
            pass


def _serve_tcp(sock: socket.socket, handler: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def _serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(65536)
        sock.sendto(data, peer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--echo", type=int, default=0, help="TCP echo port (0: any free port)")
    parser.add_argument("--count", type=int, default=0, help="TCP discard-and-count port")
    parser.add_argument("--udp", type=int, default=0, help="UDP echo port")
    args = parser.parse_args(argv)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    ports = {}
    for name, handler in (("echo", _echo), ("count", _count)):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, getattr(args, name)))
        sock.listen(1024)
        ports[name] = sock.getsockname()[1]
        threading.Thread(target=_serve_tcp, args=(sock, handler), daemon=True).start()
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    udp.bind((args.host, args.udp))
    ports["udp"] = udp.getsockname()[1]
    threading.Thread(target=_serve_udp, args=(udp,), daemon=True).start()
    print("READY " + " ".join(f"{k}={v}" for k, v in ports.items()), flush=True)
    sys.stdin.read()  # returns when the parent closes our stdin (or dies)
    return 0


class EchoServer:
    """This module's servers in a child process (``prefix``: e.g. ``["ip", "netns", "exec", NS]``).

    A context manager: on exit the process group is killed and reaped, whatever happened.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.prefix = list(prefix)
        self.extra_args = list(extra_args)
        self.timeout = timeout
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EchoServer:
        command = [*self.prefix, sys.executable, "-m", __spec__.name, "--host", self.host, *self.extra_args]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            line = self._read_line(self.proc, command)
            self.ports = {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}
        except BaseException:
            self.close()
            raise
        return self

    def _read_line(self, proc: subprocess.Popen[bytes], command: list[str]) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + self.timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(deadline - time.monotonic()):
                    line = proc.stdout.readline().decode()
                    if line.startswith("READY"):
                        return line
                    break
        stderr = b""
        if proc.poll() is not None and proc.stderr is not None:
            stderr = proc.stderr.read()
        raise RuntimeError(
            f"echo server {' '.join(command)!r} did not report READY within {self.timeout}s "
            f"(exit status {proc.poll()}); stderr: {stderr.decode(errors='replace').strip() or '(none)'}"
        )

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
