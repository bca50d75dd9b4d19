"""A read-only TFTP server (RFC 1350, with the blksize/tsize/timeout options of RFC 2347-2349), and a
network namespace with a TAP device that a QEMU board can sit on while the server answers inside it.

A test double: the ``uboot-tftp`` flasher uses the board's own TFTP folder (QEMU's user-mode
network); this is for a test that must take a TFTP server down mid-transfer.  The server runs as its
own process (``python -m pytest_jumpstarter_flashers.testing.tftp --root DIR --address IP``), inside
the namespace, so killing it is as real as a TFTP server going down.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pytest_jumpstarter.errors import DriverError
from pytest_jumpstarter.process import Child, run, spawn
from pytest_jumpstarter.waiting import Deadline

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
ERR_NOT_FOUND, ERR_ACCESS, ERR_ILLEGAL = 1, 2, 4


def _error(code: int, text: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + text.encode() + b"\0"


def _transfer(sock: socket.socket, client: tuple[str, int], path: Path, options: dict[str, str]) -> None:
    """Send ``path`` to ``client`` from ``sock`` (our own port: the transfer's TID)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        sock.sendto(_error(ERR_NOT_FOUND, "File not found"), client)
        return
    except OSError as exc:
        sock.sendto(_error(ERR_ACCESS, exc.strerror or "access violation"), client)
        return
    block_size = 512
    timeout = 1.0
    accepted: dict[str, str] = {}
    if "blksize" in options and options["blksize"].isdigit():
        block_size = max(8, min(int(options["blksize"]), 65464))
        accepted["blksize"] = str(block_size)
    if "timeout" in options and options["timeout"].isdigit():
        timeout = max(1, min(int(options["timeout"]), 255))
        accepted["timeout"] = str(int(timeout))
    if "tsize" in options:
        accepted["tsize"] = str(len(data))
    packets: Iterator[tuple[int, bytes]]
    if accepted:
        oack = struct.pack("!H", OACK) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in accepted.items()
        )
        packets = itertools.chain([(0, oack)], _data_packets(data, block_size))
    else:
        packets = _data_packets(data, block_size)
    for number, packet in packets:
        for _attempt in range(5):
            sock.sendto(packet, client)
            if _wait_ack(sock, client, number, timeout):
                break
        else:
            return  # the client went away


def _data_packets(data: bytes, block_size: int) -> Iterator[tuple[int, bytes]]:
    count = len(data) // block_size + 1  # a last, shorter (possibly empty) block ends the transfer
    for index in range(count):
        number = (index + 1) & 0xFFFF
        chunk = data[index * block_size : (index + 1) * block_size]
        yield number, struct.pack("!HH", DATA, number) + chunk


def _wait_ack(sock: socket.socket, client: tuple[str, int], number: int, timeout: float) -> bool:
    deadline = Deadline(timeout, f"ACK {number}")
    while not deadline.expired:
        ready, _, _ = select.select([sock], [], [], deadline.remaining())
        if not ready:
            return False
        packet, sender = sock.recvfrom(65536)
        if sender != client or len(packet) < 4:
            continue
        opcode, value = struct.unpack("!HH", packet[:4])
        if opcode == ACK and value == number:
            return True
        if opcode == ERROR:
            raise ConnectionAbortedError(packet[4:].split(b"\0")[0].decode(errors="replace"))
    return False


def _serve_one(sock: socket.socket, client: tuple[str, int], path: Path, options: dict[str, str]) -> None:
    with sock, contextlib.suppress(OSError, ConnectionAbortedError):
        _transfer(sock, client, path, options)


def serve(root: Path, address: str, port: int = 69, ready: threading.Event | None = None) -> None:
    """Serve files under ``root`` until killed (read requests only)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    print(f"tftp: serving {root} on {address}:{listener.getsockname()[1]}", flush=True)
    if ready is not None:
        ready.set()
    while True:
        packet, client = listener.recvfrom(65536)
        if len(packet) < 2:
            continue
        (opcode,) = struct.unpack("!H", packet[:2])
        fields = packet[2:].split(b"\0")
        if opcode != RRQ or len(fields) < 2:
            listener.sendto(_error(ERR_ILLEGAL, "read requests only"), client)
            continue
        name = fields[0].decode(errors="replace").lstrip("/")
        options = {
            fields[i].decode(errors="replace").lower(): fields[i + 1].decode(errors="replace")
            for i in range(2, len(fields) - 1, 2)
        }
        path = (root / name).resolve()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        if root.resolve() not in path.parents:
            sock.sendto(_error(ERR_ACCESS, "outside the served folder"), client)
            sock.close()
            continue

        threading.Thread(
            target=_serve_one, args=(sock, client, path, options), name=f"tftp-{client[1]}", daemon=True
        ).start()


@dataclass
class NetnsTftp:
    """A network namespace holding a TAP device (for QEMU) and a TFTP server process on it.

    ``qemu_binary`` is a wrapper that starts QEMU inside the namespace, so QEMU can open the TAP;
    the board's ``extra_args`` attach it (:meth:`qemu_args`).  :meth:`close` kills the server and
    deletes the namespace, which removes the TAP with it.
    """

    name: str
    tap: str
    root: Path
    server_address: str = "10.0.3.1"
    board_address: str = "10.0.3.2"
    qemu_binary: Path | None = None
    server: Child | None = None

    def qemu_args(self, device: str = "virtio-net-device") -> list[str]:
        return ["-netdev", f"tap,id=tapnet,ifname={self.tap},script=no,downscript=no",
                "-device", f"{device},netdev=tapnet"]  # fmt: skip

    def kill_server(self) -> None:
        """Stop the TFTP server at once (SIGKILL): it just stops answering, as a crashed server does."""
        if self.server is not None:
            self.server.kill(timeout=10)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(DriverError):
            run(["ip", "netns", "delete", self.name], device="tftp", timeout=30)


_serial = itertools.count(1)


@contextlib.contextmanager
def netns_tftp(root: Path, qemu: str) -> Iterator[NetnsTftp]:
    """A :class:`NetnsTftp` serving ``root``, with a wrapper that runs ``qemu`` inside it."""
    if shutil.which("ip") is None:
        raise DriverError("tftp", "the 'ip' command (iproute2) is needed for a network namespace")
    number = next(_serial)
    env = NetnsTftp(
        name=f"jsflash-{os.getpid()}-{number}", tap=f"jstap{os.getpid() % 10000}n{number}", root=root
    )
    try:
        _ip("netns", "add", env.name)
        inside = ["ip", "netns", "exec", env.name]
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "tuntap", "add", "dev", env.tap, "mode", "tap"],
            ["ip", "addr", "add", f"{env.server_address}/24", "dev", env.tap],
            ["ip", "link", "set", env.tap, "up"],
        ):
            _run([*inside, *command])
        wrapper = root.parent / f"qemu-in-{env.name}"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {env.name} {shutil.which(qemu) or qemu} "$@"\n')
        wrapper.chmod(0o755)
        env.qemu_binary = wrapper
        server = [sys.executable, "-m", __spec__.name, "--address", env.server_address]
        env.server = spawn(
            [*inside, *server, "--root", str(root)], device="tftp", stdout=subprocess.PIPE, stderr="tail"
        )
        assert env.server.stdout is not None
        ready, _, _ = select.select([env.server.stdout], [], [], 15)
        line = env.server.stdout.readline().decode(errors="replace") if ready else ""
        if "serving" not in line:
            raise DriverError(
                "tftp",
                f"the TFTP server in namespace {env.name} did not start: {line!r}"
                f" (stderr: {env.server.stderr_tail(5) or 'none'})",
            )
        yield env
    finally:
        env.close()


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _run(command: list[str]) -> None:
    run(command, device="tftp", timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description="read-only TFTP server")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=69)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.root, args.address, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
