"""Exclusive devices through the plugin: concurrent pytest runs take turns, a killed holder lets go,
a waiting run says who holds the device and gives up with a clear error.

The device is cheap (driver ``probe``, defined in the inner runs' conftest), so these need no QEMU.
A holding run's test connects to a unix socket of ours and waits there until we say "go", so we
decide when it lets go, without sleeping.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

PROBE_CONFTEST = '''
import os
import time

import pytest
from pytest_jumpstarter import Driver, device_fixture


class Probe(Driver):
    """Writes when it is in use, so the outer test can check that uses never overlap."""

    name = "probe"
    role = "probe"

    def note(self, what):
        with open(os.environ["PROBE_LOG"], "a") as f:
            f.write(f"{what} {os.getpid()} {time.monotonic()}\\n")

    def start(self):
        self.note("start")
        self.started = True

    def stop(self):
        self.note("stop")
        self.started = False


@pytest.hookimpl
def pytest_jumpstarter_add_drivers():
    return [Probe]


probe = device_fixture("probe")
'''

HOLD_TEST = """
import os
import socket


def test_hold(probe):
    gate = os.environ.get("PROBE_GATE")
    if gate:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(gate)
            s.sendall(b"holding\\n")
            s.recv(16)  # blocks until the outer test says go (pytest-timeout bounds it)
"""

BENCH_YAML = """
name: bench
devices:
  probe:
    driver: probe
    exclusive: true
    lock: bench-1
"""

# The same physical board described by another lab's ini file: same lock name, its own timeout.
OTHER_LAB_INI = """
[target]
name = other-lab

[device probe]
driver = probe
exclusive = yes
lock = bench-1
lock_timeout = 1s
"""


@dataclass
class Run:
    """An inner pytest process whose output lines we can wait for."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_line(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line with {text!r} within {timeout}s; output:\n" + "\n".join(self.seen)
                ) from None
            if line is None:
                raise AssertionError(
                    f"run ended without a line with {text!r}; output:\n" + "\n".join(self.seen)
                )
            self.seen.append(line)
            if text in line:
                return line

    def finish(self, timeout: float = 60.0) -> str:
        self.proc.wait(timeout)
        while True:
            line = self.lines.get(timeout=10)
            if line is None:
                return "\n".join(self.seen)
            self.seen.append(line)


class Lab:
    """Starts inner pytest runs against the probe device, sharing one lock folder; cleans them up."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.path = pytester.path
        pytester.makeconftest(PROBE_CONFTEST)
        pytester.makepyfile(test_hold=HOLD_TEST)
        pytester.makefile(".yaml", bench=BENCH_YAML)
        pytester.makefile(".ini", other_lab=OTHER_LAB_INI)
        self.log = self.path / "probe.log"
        self.locks = self.path / "locks"
        # unix socket paths are limited to 107 bytes; pytester's folders can be longer.
        self._sockdir = Path(tempfile.mkdtemp(prefix="jsl-"))
        self.gate = self._sockdir / "gate.sock"
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.gate))
        self.listener.listen(4)
        self.runs: list[Run] = []
        self.holder_conn: socket.socket | None = None

    def start(self, *args: str, gate: bool = False) -> Run:
        env = {**os.environ, "PROBE_LOG": str(self.log), "JUMPSTARTER_LOCK_DIR": str(self.locks)}
        # A run killed with SIGKILL cannot remove its device folders: keep them in pytester's folder.
        (self.path / "tmp").mkdir(exist_ok=True)
        env["TMPDIR"] = str(self.path / "tmp")
        env.pop("PYTEST_XDIST_WORKER", None)
        env.pop("PYTEST_ADDOPTS", None)
        if gate:
            env["PROBE_GATE"] = str(self.gate)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--timeout=60", "test_hold.py", *args],
            cwd=self.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        run = Run(proc)
        self.runs.append(run)
        return run

    def start_holder(self, *args: str) -> Run:
        """A run whose test holds the device until :meth:`let_go` (returns once it holds it)."""
        run = self.start("--target=bench.yaml", *args, gate=True)
        self.listener.settimeout(30)
        conn, _ = self.listener.accept()
        conn.settimeout(30)
        assert conn.recv(16) == b"holding\n"
        self.holder_conn = conn
        return run

    def let_go(self) -> None:
        assert self.holder_conn is not None
        self.holder_conn.sendall(b"go")
        self.holder_conn.close()
        self.holder_conn = None

    def uses(self) -> list[tuple[int, float, float]]:
        """(pid, start, stop) of each use of the probe, from its log."""
        opened: dict[int, float] = {}
        spans = []
        for line in self.log.read_text().splitlines():
            what, pid, when = line.split()
            if what == "start":
                opened[int(pid)] = float(when)
            else:
                spans.append((int(pid), opened.pop(int(pid)), float(when)))
        return sorted(spans, key=lambda s: s[1])

    def close(self) -> None:
        if self.holder_conn is not None:
            self.holder_conn.close()
        self.listener.close()
        for run in self.runs:
            if run.proc.poll() is None:
                os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait(10)
            if run.proc.stdout is not None:
                run.proc.stdout.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)


@pytest.fixture
def lab(pytester: pytest.Pytester) -> Iterator[Lab]:
    lab = Lab(pytester)
    try:
        yield lab
    finally:
        lab.close()


def test_two_runs_on_one_exclusive_device_take_turns_and_the_waiting_one_says_who_holds_it(lab: Lab) -> None:
    holder = lab.start_holder()
    waiter = lab.start("--target=bench.yaml")
    line = waiter.wait_for_line("waiting for exclusive device")
    assert (
        f"jumpstarter: waiting for exclusive device 'bench-1', held by pytest pid {holder.proc.pid}"
        " (test_hold.py::test_hold[bench]) since " in line
    ), line
    lab.let_go()
    assert "1 passed" in holder.finish()
    assert "1 passed" in waiter.finish()
    (first, second) = lab.uses()
    assert (first[0], second[0]) == (holder.proc.pid, waiter.proc.pid)
    assert second[1] >= first[2], f"the runs used the device at the same time: {lab.uses()}"


def test_a_holder_killed_with_sigkill_lets_the_next_run_have_the_device_before_its_lease_ends(
    lab: Lab,
) -> None:
    holder = lab.start_holder()
    os.killpg(holder.proc.pid, signal.SIGKILL)
    holder.proc.wait(10)  # reaped: its PID is gone, so the lease is over at once
    # The lease is 30 s; waiting at most 10 s shows the device was freed by the holder's death.
    after = lab.start("--target=bench.yaml", "--jumpstarter-lock-timeout=10")
    out = after.finish()
    assert "1 passed" in out, out


def test_a_run_that_waits_too_long_errors_naming_the_device_and_its_holder(lab: Lab) -> None:
    holder = lab.start_holder()
    # Another target file naming the same board (lock: bench-1), with lock_timeout = 1s.
    late = lab.start("--target=other_lab.ini")
    out = late.finish()
    assert "1 error" in out, out
    assert (
        f"LockTimeout: exclusive device 'bench-1' is held by pytest pid {holder.proc.pid} "
        "(test_hold.py::test_hold[bench])" in out
    ), out
    assert "gave up after 1s" in out, out
    lab.let_go()
    assert "1 passed" in holder.finish()
    # The late run never started the device.
    assert [pid for pid, _, _ in lab.uses()] == [holder.proc.pid]


def test_lock_settings_are_checked_with_the_rest_of_the_target(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(PROBE_CONFTEST)
    pytester.makepyfile(test_hold=HOLD_TEST)
    pytester.makefile(
        ".yaml",
        bench="""
name: bench
devices:
  probe:
    driver: probe
    lock: bench-1
    lock_timout: 5s
""",
    )
    result = pytester.runpytest("--target=bench.yaml")
    result.stderr.fnmatch_lines(
        [
            "*bench.yaml:5: devices.probe.lock: lock applies to exclusive devices only, and this one is not: add exclusive: true*",
            "*bench.yaml:6: devices.probe.lock_timout: unknown setting 'lock_timout' for driver 'probe'; did you mean 'lock_timeout'?*",
        ]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


LOSE_TEST = """
from pytest_jumpstarter.plugin import RUN


def test_lease_runs_out(request, probe):
    device = request.config.stash[RUN].manager.live[("bench", "probe")]
    # What the lease's renewer finds when another run took the lease after ours ran out unrenewed.
    device.lease.lost = True


def test_next(probe):
    pass
"""


def test_a_run_that_lost_its_lease_says_so_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_LOG", str(pytester.path / "probe.log"))
    pytester.makeconftest(PROBE_CONFTEST)
    pytester.makepyfile(test_lose=LOSE_TEST)
    pytester.makefile(".yaml", bench=BENCH_YAML.replace("    lock: bench-1\n", "    scope: session\n"))
    result = pytester.runpytest(
        "--target=bench.yaml", f"--jumpstarter-lock-dir={pytester.path / 'locks'}", "-rP"
    )
    result.assert_outcomes(passed=2)
    line = "jumpstarter: lost the lease on exclusive device 'bench/probe' during test_lose.py::test_lease_runs_out?bench?: *"
    result.stdout.fnmatch_lines([line])
    assert result.stdout.str().count("jumpstarter: lost the lease") == 1
