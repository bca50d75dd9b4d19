"""Real Jumpstarter exporters for the tests: ``jmp run`` processes serving Jumpstarter's own drivers.

The exporter runs as ``nobody`` (``setpriv``): jumpstarter-driver-qemu picks KVM whenever ``/dev/kvm``
is read-write, KVM is broken on these machines, and ``nobody`` cannot open ``/dev/kvm``, so QEMU
runs under TCG.  Its Python must be readable by ``nobody`` (not under ``/root``, which is 0700):
the test run's own venv when it is, else a venv built once under ``/var/tmp``.

``jmp run`` forks a child that calls ``setsid()``, and QEMU belongs to that child.  A stop sends
SIGTERM to the parent's group (the parent forwards it), then SIGKILL to every process of the
parent's and the child's sessions, so a SIGKILLed exporter cannot leave its QEMU behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

EXPORTER_USER = "nobody"
EXPORTER_GROUP = "nogroup"
#: The Jumpstarter packages an exporter needs, at the versions installed in the test run.
EXPORTER_PACKAGES = (
    "jumpstarter",
    "jumpstarter-cli",
    "jumpstarter-driver-qemu",
    "jumpstarter-driver-power",
    "jumpstarter-driver-network",
    "jumpstarter-driver-opendal",
)
IMAGES = Path(os.environ.get("JUMPSTARTER_IMAGES") or "~/.cache/pytest-jumpstarter/images").expanduser()
BOOTDISK = IMAGES / "linux-x86_64" / "bootdisk.img"


def _ids() -> tuple[int, int]:
    import grp
    import pwd

    return pwd.getpwnam(EXPORTER_USER).pw_uid, grp.getgrnam(EXPORTER_GROUP).gr_gid


def as_exporter_user(argv: Sequence[str]) -> list[str]:
    return ["setpriv", f"--reuid={EXPORTER_USER}", f"--regid={EXPORTER_GROUP}", "--clear-groups", *argv]


def _usable_by_exporter_user(python: str) -> bool:
    probe = as_exporter_user(
        [python, "-c", "import jumpstarter_cli, jumpstarter_driver_qemu, jumpstarter_driver_power"]
    )
    return subprocess.run(probe, capture_output=True, timeout=60, cwd="/").returncode == 0


def exporter_python() -> str:
    """A Python with the Jumpstarter exporter stack that the exporter user can run."""
    if os.geteuid() != 0:
        # Not root: /dev/kvm policy is whatever it is for us; run the exporter as ourselves.
        return sys.executable
    if _usable_by_exporter_user(sys.executable):
        return sys.executable
    versions = [f"{name}=={metadata.version(name)}" for name in EXPORTER_PACKAGES]
    tag = metadata.version("jumpstarter")
    venv = Path(f"/var/tmp/pytest-jumpstarter-exporter-venv-{tag}")
    python = venv / "bin" / "python"
    lock = Path(f"/var/tmp/pytest-jumpstarter-exporter-venv-{tag}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # xdist workers build it once
        if python.exists() and _usable_by_exporter_user(str(python)):
            return str(python)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *versions],
            check=True,
            timeout=900,
        )
        os.chmod(venv, 0o755)
    if not _usable_by_exporter_user(str(python)):
        raise RuntimeError(f"{python} was built but {EXPORTER_USER} cannot import jumpstarter from it")
    return str(python)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgrp, session) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2]), int(fields[3])


def processes_in_sessions(sessions: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[2] in sessions:
                found.append(int(entry.name))
    return found


def private_dir(prefix: str) -> Path:
    """A temp folder the exporter user owns (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    if os.geteuid() == 0:
        uid, gid = _ids()
        os.chown(path, uid, gid)
    return path


def give_to_exporter_user(path: Path) -> None:
    if os.geteuid() == 0:
        uid, gid = _ids()
        os.chown(path, uid, gid)


def exporter_config(
    name: str, export: Mapping[str, Any], endpoint: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "jumpstarter.dev/v1alpha1",
        "kind": "ExporterConfig",
        "metadata": {"namespace": "default", "name": name},
        "endpoint": endpoint,
        "export": dict(export),
        **extra,
    }


def demo_board_export(workdir: Path, forwards: Mapping[str, int]) -> dict[str, Any]:
    """The export tree of the demo board: a Jumpstarter QEMU VM, a MockPower and a TcpNetwork.

    The QEMU VM boots a private copy of ``bootdisk.img`` (a flash replaces it); ``forwards`` maps
    a name to a guest port, each given a free host port (jumpstarter-driver-qemu has no port 0).
    """
    disk = workdir / "bootdisk.img"
    shutil.copyfile(BOOTDISK, disk)
    give_to_exporter_user(disk)
    hostfwd = {name: {"hostport": free_port(), "guestport": port} for name, port in forwards.items()}
    return {
        "qemu": {
            "type": "jumpstarter_driver_qemu.driver.Qemu",
            "config": {
                "arch": "x86_64",
                "smp": 1,
                "mem": "256M",
                "default_partitions": {"root": str(disk)},
                "hostfwd": hostfwd,
            },
        },
        "mockpower": {"type": "jumpstarter_driver_power.driver.MockPower"},
    }


@dataclass
class Exporter:
    """A ``jmp run`` process and everything it starts; :meth:`stop` leaves nothing behind."""

    config: dict[str, Any]
    workdir: Path
    listen: str | None = None  # "127.0.0.1:PORT" for standalone mode, None for controller mode
    passphrase: str | None = None
    tls: tuple[Path, Path] | None = None  # (cert, key) for a TLS standalone listener
    process: subprocess.Popen[bytes] | None = None
    sessions: set[int] = field(default_factory=set)

    @property
    def log(self) -> Path:
        return self.workdir / "exporter.log"

    def start(self, timeout: float = 60.0) -> Exporter:
        config_path = self.workdir / "exporter.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        give_to_exporter_user(config_path)
        argv = [exporter_python(), "-m", "jumpstarter_cli", "run", "--exporter-config", str(config_path)]
        if self.listen is not None:
            argv += ["--tls-grpc-listener", self.listen]
            if self.tls is None:
                argv.append("--tls-grpc-insecure")
            else:
                argv += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
            if self.passphrase:
                argv += ["--passphrase", self.passphrase]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir),
            "XDG_RUNTIME_DIR": str(self.workdir),
            "XDG_CONFIG_HOME": str(self.workdir / ".config"),
            "LANG": "C.UTF-8",
            "NONINTERACTIVE": "1",
        }
        command = as_exporter_user(argv) if os.geteuid() == 0 else argv
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.sessions.add(self.process.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._track_children()
            if self.process.poll() is not None:
                raise RuntimeError(f"exporter exited with {self.process.returncode}:\n{self.log_tail()}")
            if (self.listen is None or self._accepts()) and len(self.sessions) > 1:
                return self
            time.sleep(0.05)  # polling the listener: nothing else tells us when it is up
        self.stop()
        raise RuntimeError(f"exporter did not come up within {timeout}s:\n{self.log_tail()}")

    def _accepts(self) -> bool:
        assert self.listen is not None
        host, port = self.listen.rsplit(":", 1)
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
            return True
        return False

    def _track_children(self) -> None:
        """Remember the session of every child of the ``jmp run`` parent (it forks and setsid()s)."""
        if self.process is None:
            return
        for pid in processes_in_sessions(set(self.sessions)) + self._children(self.process.pid):
            st = _stat(pid)
            if st is not None:
                self.sessions.add(st[2])

    @staticmethod
    def _children(pid: int) -> list[int]:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def child_pid(self) -> int | None:
        if self.process is None:
            return None
        kids = self._children(self.process.pid)
        return kids[0] if kids else None

    def leftovers(self) -> list[int]:
        return processes_in_sessions(self.sessions)

    def kill_hard(self) -> None:
        """SIGKILL the ``jmp run`` parent and its child only (a crash), leaving QEMU orphaned."""
        self._track_children()
        child = self.child_pid()
        for pid in (self.process.pid if self.process else None, child):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None:
            return
        self._track_children()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        for _ in range(50):
            pids = self.leftovers()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)  # waiting for the kernel to reap what was just killed
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_exporter(
    name: str, export: Mapping[str, Any], workdir: Path, **kwargs: Any
) -> Iterator[Exporter]:
    exporter = Exporter(exporter_config(name, export, **kwargs.pop("config_extra", {})), workdir, **kwargs)
    try:
        yield exporter.start()
    finally:
        exporter.stop()
        left = exporter.leftovers()
        assert not left, f"exporter {name} left processes behind: {left}"
