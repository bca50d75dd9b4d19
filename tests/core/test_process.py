"""The child-process helper and the deadline helper, on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_jumpstarter.errors import CommandFailed, CommandNotFound, WaitTimeout
from pytest_jumpstarter.process import Child, run, spawn
from pytest_jumpstarter.waiting import Deadline


def test_run_returns_stdout_and_a_failure_carries_the_stderr_tail() -> None:
    assert run(["echo", "hello"], device="d", timeout=10) == "hello\n"
    with pytest.raises(CommandFailed, match=r"device 'd': sh -c .* failed \(exit status 3\): broken") as info:
        run(["sh", "-c", "echo noise; echo broken >&2; exit 3"], device="d", timeout=10)
    assert info.value.returncode == 3


def test_run_stops_a_command_that_outlives_its_timeout_and_says_what_it_waited_for() -> None:
    with pytest.raises(WaitTimeout, match=r"timed out after 0.2s waiting for sleeping to finish"):
        run(["sleep", "30"], device="d", timeout=0.2, what="sleeping")


def test_a_missing_program_names_itself_and_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(CommandNotFound, match=r"'no-such-tool' is not installed .*\(apt-get install x\)"):
        spawn(["no-such-tool"], device="d", hint="(apt-get install x)")


def test_a_child_has_its_own_session() -> None:
    with spawn(["sleep", "30"], device="d") as child:
        assert os.getsid(child.pid) == child.pid
        assert os.getpgid(child.pid) == child.pid


def test_stop_is_bounded_for_a_child_that_ignores_sigterm_and_takes_its_group_along() -> None:
    script = "sleep 30 & echo started >&2; trap '' TERM; while :; do sleep 1; done"
    child = Child(["sh", "-c", script], device="d")
    try:
        assert wait_for(lambda: "started" in child.stderr_tail())
        status = child.stop(grace=0.2, kill_grace=5.0)
        assert status == -signal.SIGKILL
        # The background sleep went with it; killed, it lingers as a zombie until init reaps it.
        assert wait_for(lambda: _group_gone(child.pid))
    finally:
        child.close()


def test_a_stopped_child_ends_by_the_sigterm_it_was_sent_not_by_sigkill() -> None:
    child = Child(["sleep", "30"], device="d")
    try:
        os.kill(child.pid, signal.SIGSTOP)
        assert wait_for(
            lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        )
        # Stopped, it would keep SIGTERM pending for the whole grace and end only by SIGKILL.
        assert child.stop(grace=60.0, kill_grace=5.0) == -signal.SIGTERM
    finally:
        child.close()


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_stderr_tail_is_bounded(tmp_path: Path) -> None:
    with Child(["sh", "-c", "yes line | head -n 100000 >&2; echo last >&2"], device="d") as child:
        assert child.wait(10)
        assert child.stderr_tail(2) == "line\nlast"
        assert sum(len(chunk) for chunk in child._tail) < 2 * 16 * 1024


def test_a_child_dies_with_its_sigkilled_parent(tmp_path: Path) -> None:
    parent = textwrap.dedent(
        """
        import sys
        from pytest_jumpstarter.process import spawn
        child = spawn(["sleep", "60"], device="d")
        print(child.pid, flush=True)
        sys.stdin.read()
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        owner.kill()
        owner.wait(10)
        assert wait_for(lambda: not alive(pid))
    finally:
        owner.kill()
        owner.wait(10)


def test_a_deadline_names_what_was_awaited() -> None:
    deadline = Deadline(0.0, "the console socket")
    assert deadline.expired and deadline.remaining() == 0.0
    assert str(deadline.error("vm", "QEMU still running")) == (
        "device 'vm': timed out after 0s waiting for the console socket (QEMU still running)"
    )
    forever = Deadline(None, "nothing")
    assert not forever.expired and forever.remaining() is None and forever.remaining(5.0) == 5.0
    assert 0 < Deadline(10, "x").remaining(cap=1.0) <= 1.0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = Deadline(timeout, "a condition")
    while not deadline.expired:
        if condition():
            return True
        time.sleep(0.02)  # polling a condition another process changes; nothing to wait on
    return condition()
