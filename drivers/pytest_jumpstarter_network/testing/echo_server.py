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
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from types import TracebackType

from pytest_jumpstarter.process import Child, spawn
from pytest_jumpstarter.waiting import Deadline


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
        self.proc: Child | None = None

    def __enter__(self) -> EchoServer:
        command = [*self.prefix, sys.executable, "-m", __spec__.name, "--host", self.host, *self.extra_args]
        self.proc = spawn(command, device="echo-server", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            line = self._read_line(self.proc, command)
            self.ports = {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}
        except BaseException:
            self.close()
            raise
        return self

    def _read_line(self, proc: Child, command: list[str]) -> str:
        assert proc.stdout is not None
        deadline = Deadline(self.timeout, "READY")
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not deadline.expired:
                if sel.select(deadline.remaining()):
                    line = proc.stdout.readline().decode()
                    if line.startswith("READY"):
                        return line
                    break
        stderr = proc.stderr_tail() if not proc.running else ""
        raise RuntimeError(
            f"echo server {' '.join(command)!r} did not report READY within {self.timeout}s "
            f"(exit status {proc.returncode}); stderr: {stderr.strip() or '(none)'}"
        )

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill(10)
            proc.close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
