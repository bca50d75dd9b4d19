"""Helpers of the fault suite: the inner run, its recorder plugin, leftovers, fault records."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pytest_jumpstarter_qemu.images import Images

RECORDS = Path(
    os.environ.get("JUMPSTARTER_FAULT_RECORDS", Path(__file__).parents[2] / "build" / "fault-records")
)

#: The inner run's conftest: records each ready device's QEMU pid and folders in recorded.jsonl,
#: so the outer test checks exactly those (not a guess by process name).
RECORDER = """
import json, os
import pytest

@pytest.hookimpl
def pytest_jumpstarter_device_ready(device, item):
    process = getattr(device, "process", None)
    entry = {
        "pid": os.getpid(),
        "qemu_pid": process.pid if process is not None else None,
        "workdir": str(device.ctx.workdir),
        "workroot": str(device.ctx.workdir.parent),
    }
    with open(os.path.join(os.environ["FAULT_DIR"], "recorded.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\\n")
    print("DEVICE-READY", process.pid if process is not None else "", flush=True)
"""


def board_yaml(images: Images, **settings: object) -> str:
    more = "".join(f"    {k}: {v}\n" for k, v in settings.items())
    return (
        "name: demo\ndevices:\n  qemu_vm:\n    driver: qemu\n"
        f"    kernel: {images.linux_kernel}\n    initrd: {images.linux_initrd}\n{more}"
    )


@dataclass
class Inner:
    """One inner pytest run in its own session (process group), with its own TMPDIR."""

    path: Path
    proc: subprocess.Popen[bytes]
    started: float
    output: bytearray = field(default_factory=bytearray)

    def wait_for(self, marker: bytes, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while marker not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"the inner run never printed {marker!r}:\n{self.text}"
            if select.select([self.proc.stdout], [], [], left)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"the inner run ended early:\n{self.text}"
                self.output += chunk

    def finish(self, timeout: float = 120.0) -> int:
        try:
            rest, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.output += rest or b""
        return self.proc.returncode

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def recorded(self) -> list[dict[str, object]]:
        log = self.path / "recorded.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def qemu_pid(self) -> int:
        pids = [r["qemu_pid"] for r in self.recorded() if r["qemu_pid"]]
        assert pids, f"no QEMU was recorded:\n{self.text}"
        return int(pids[-1])  # type: ignore[call-overload]


def start_inner(path: Path, *args: str) -> Inner:
    (path / "conftest.py").write_text(RECORDER)
    tmp = path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp), "FAULT_DIR": str(path)}
    proc = subprocess.Popen(
        # pytest's own basetemp (kept by its retention policy) lives apart from the TMPDIR we check.
        [
            sys.executable,
            "-m",
            "pytest",
            "-s",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--basetemp={path / 'basetemp'}",
            *args,
        ],
        cwd=path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    return Inner(path, proc, time.monotonic())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def leftovers(inner: Inner, settle: float = 10.0) -> list[str]:
    """What the inner run left behind: recorded processes still alive, recorded folders that exist,
    anything in its TMPDIR, any process still in its session."""
    deadline = time.monotonic() + settle
    while True:
        left = []
        for entry in inner.recorded():
            for key in ("qemu_pid",):
                pid = entry.get(key)
                if isinstance(pid, int) and _alive(pid):
                    left.append(f"process {pid} ({key})")
            for key in ("workdir", "workroot"):
                if Path(str(entry[key])).exists():
                    left.append(f"folder {entry[key]}")
        left += [f"temp {p}" for p in sorted((inner.path / "tmp").iterdir())]
        left += [f"session process {pid}" for pid in _session(inner.proc.pid)]
        if not left or time.monotonic() >= deadline:
            return sorted(set(left))
        time.sleep(0.2)  # polling the process table: nothing else tells us when a child is reaped


def _session(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


def record(fault: str, seen: str, left: list[str], seconds: float, exit_code: int | str) -> None:
    """One row of RELIABILITY.md."""
    RECORDS.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() else "-" for c in fault.lower()).strip("-")
    (RECORDS / f"{name}.json").write_text(
        json.dumps(
            {"fault": fault, "seen": seen, "left": left, "seconds": round(seconds, 1), "exit": exit_code},
            indent=1,
        )
    )


def first_line_with(text: str, *needles: str) -> str:
    for line in text.splitlines():
        if all(n in line for n in needles):
            return line.strip()
    return ""
