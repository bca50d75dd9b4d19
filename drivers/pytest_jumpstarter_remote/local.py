"""``exporter_config:``: an exporter run by the device itself, for as long as the device lives.

It is ``jmp run --exporter-config FILE --tls-grpc-listener 127.0.0.1:PORT --tls-grpc-insecure``
in a session of its own.  ``jmp run`` forks a child that calls ``setsid()`` and owns the drivers'
processes (a QEMU, say), so a stop signals the parent's group, then kills what is left of both
sessions: nothing it started outlives the device.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pytest_jumpstarter.errors import DriverError


def _session_of(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[3])


def _members(sessions: set[int]) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _session_of(int(p.name)) in sessions
    ]


class LocalExporter:
    def __init__(self, device: str, config: Path, workdir: Path) -> None:
        self.device = device
        self.config = config
        self.log = workdir / "exporter.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.sessions: set[int] = set()

    def start(self, timeout: float) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address = f"127.0.0.1:{port}"
        argv = [
            sys.executable,
            "-m",
            "jumpstarter_cli",
            "run",
            "--exporter-config",
            str(self.config),
            "--tls-grpc-listener",
            address,
            "--tls-grpc-insecure",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=dict(os.environ, NONINTERACTIVE="1"),
            )
        self.sessions.add(self.process.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._track()
            if self.process.poll() is not None:
                raise DriverError(
                    self.device,
                    f"exporter_config {self.config}: jmp run exited with "
                    f"{self.process.returncode}:\n{self.tail()}",
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return address
            time.sleep(0.05)  # polling the listener: jmp run does not say when it is up
        raise DriverError(
            self.device,
            f"exporter_config {self.config}: no listener on {address} after {timeout:g}s:\n{self.tail()}",
        )

    def _track(self) -> None:
        for pid in _members(set(self.sessions)):
            session = _session_of(pid)
            if session is not None:
                self.sessions.add(session)
        if self.process is not None:
            with contextlib.suppress(OSError):
                for child in (
                    Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
                ):
                    session = _session_of(int(child))
                    if session is not None:
                        self.sessions.add(session)

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no output)"

    def before_disconnect(self) -> None:
        pass

    def check_now(self) -> DriverError | None:
        return None

    def close(self) -> None:
        if self.process is None:
            return
        self._track()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while (left := _members(self.sessions)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)  # the kernel reaps what was just killed
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)
        self.process = None
