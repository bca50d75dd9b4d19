"""Helpers of the board tests: a lab on this machine: a relay script that starts and stops a real QEMU U-Boot board whose serial is
a TCP server, and a fake console server for the tests that need no QEMU."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
RELAY = HERE / "lab_relay.py"
UBOOT_ARM64 = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    sys.path.insert(0, str(HERE))
    try:
        import lab_relay
    finally:
        sys.path.remove(str(HERE))
    return lab_relay.listening(port)


@dataclass
class Lab:
    """One QEMU arm64 U-Boot board behind lab_relay.py: its state folder, console port, disk and TFTP folder."""

    state: Path
    port: int
    disk: Path
    tftp: Path
    marker: str = field(init=False)

    def __post_init__(self) -> None:
        self.marker = str(self.disk)
        argv = [
            "qemu-system-aarch64",
            "-M", "virt", "-cpu", "cortex-a57", "-m", "512", "-accel", "tcg",
            "-display", "none", "-monitor", "none", "-nodefaults",
            # wait=on: the guest starts once the console has connected, so nothing it prints is lost.
            "-serial", f"tcp:127.0.0.1:{self.port},server=on,wait=on",
            "-bios", str(UBOOT_ARM64),
            "-netdev", f"user,id=n0,tftp={self.tftp}",
            "-device", "virtio-net-device,netdev=n0",
            "-drive", f"if=none,id=d0,format=raw,file={self.disk}",
            "-device", "virtio-blk-device,drive=d0",
        ]  # fmt: skip
        (self.state / "board.json").write_text(
            json.dumps({"argv": argv, "port": self.port, "marker": self.marker})
        )

    def command(self, action: str) -> str:
        return json.dumps([sys.executable, str(RELAY), str(self.state), action])

    def pids(self) -> list[int]:
        log = self.state / "pids.log"
        return [int(line) for line in log.read_text().split()] if log.exists() else []

    def alive(self) -> list[int]:
        """Pids the relay started that still run (and still are our QEMU, not a reused pid)."""
        found = []
        for pid in self.pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if self.marker.encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(pid)
        return found

    def target(self, extra: str = "") -> str:
        return f"""
name: lab-arm64
devices:
  relay:
    driver: command-power
    on_command: {self.command("on")}
    off_command: {self.command("off")}
    status_command: {self.command("status")}
    cycle_delay: 0
  uart:
    driver: serial
    url: socket://127.0.0.1:{self.port}
    open_at_start: false
  lab:
    driver: board
    power: relay
    console: uart
    shell: uboot
    tftp_root: {self.tftp}
    scope: session
    reset: reboot
{extra}"""


class FakeConsoleServer:
    """A TCP console server that greets each connection with a boot banner, as a board after power-on.

    It counts connections, so a test can tell that the board reconnected its console.
    """

    def __init__(self, banner: bytes) -> None:
        self.banner = banner
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._clients: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-console", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._clients.append(conn)
            conn.sendall(self.banner)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._listener.close()
        for conn in self._clients:
            conn.close()
