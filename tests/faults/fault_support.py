"""Helpers of the fault suite: the inner run, its recorder plugin, leftovers, fault records."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
        "test": item.nodeid if item is not None else None,
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

    def wait_for_file(self, name: str, timeout: float = 120.0) -> Path:
        """Wait for a file the inner test makes in its folder (xdist workers' prints do not reach us)."""
        path = self.path / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None, f"the inner run ended early:\n{self.text}"
            assert time.monotonic() < deadline, f"the inner run never made {name}:\n{self.text}"
            self._drain(0.05)  # polls the file meanwhile: nothing else tells us it appeared
        return path

    def wait_for_file_glob(self, pattern: str, timeout: float = 120.0) -> Path:
        """The first file matching ``pattern`` the inner test makes in its folder."""
        deadline = time.monotonic() + timeout
        while not (found := sorted(self.path.glob(pattern))):
            assert self.proc.poll() is None, f"the inner run ended early:\n{self.text}"
            assert time.monotonic() < deadline, f"the inner run never made {pattern}:\n{self.text}"
            self._drain(0.05)  # polls the folder meanwhile: nothing else tells us
        return found[0]

    def _drain(self, wait: float) -> None:
        """Read what the inner run printed within ``wait`` seconds (its pipe must not fill up)."""
        assert self.proc.stdout is not None
        if select.select([self.proc.stdout], [], [], wait)[0]:
            self.output += os.read(self.proc.stdout.fileno(), 65536)

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


def start_inner(path: Path, *args: str, capture: bool = False) -> Inner:
    """Start the inner run; ``capture`` keeps pytest's output capture (default off: markers print at once)."""
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
            *([] if capture else ["-s"]),
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
        left += [f"session process {pid}" for pid in session_processes(inner.proc.pid)]
        if not left or time.monotonic() >= deadline:
            return sorted(set(left))
        time.sleep(0.2)  # polling the process table: nothing else tells us when a child is reaped


def session_processes(sid: int) -> list[int]:
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
    seen, left = _scrub(seen), [_scrub(item) for item in left]
    name = "".join(c if c.isalnum() else "-" for c in fault.lower()).strip("-")
    (RECORDS / f"{name}.json").write_text(
        json.dumps(
            {"fault": fault, "seen": seen, "left": left, "seconds": round(seconds, 1), "exit": exit_code},
            indent=1,
        )
    )


def _scrub(text: str) -> str:
    """No session-local paths in RELIABILITY.md: the inner run's folder becomes RUN."""
    return re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s]+", "RUN", text)


def first_line_with(text: str, *needles: str, following: int = 0) -> str:
    """The first line holding every needle, joined with the ``following`` lines (an error's reason)."""
    lines = text.splitlines()
    for at, line in enumerate(lines):
        if all(n in line for n in needles):
            more = [re.sub(r"^E\s+", "", extra).strip() for extra in lines[at + 1 : at + 1 + following]]
            return " ".join([line.strip(), *more])
    return ""


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at ``path`` (root only) for the length of the block: a folder that fills up."""
    path.mkdir(exist_ok=True)
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "fault-tmpfs", str(path)], check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=30)
        path.rmdir()
