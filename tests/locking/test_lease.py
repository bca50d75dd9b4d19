"""Exclusive-device leases across real processes: turns, timeouts, and holders that die or hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_jumpstarter.errors import LockTimeout
from pytest_jumpstarter.locking import DeviceLease, Holder

HOLDER = """
import sys
from pathlib import Path
from pytest_jumpstarter.locking import DeviceLease
lease = DeviceLease("board-1", lock_dir=Path(sys.argv[1]), lease=float(sys.argv[2]), owner="holder-script")
lease.acquire(timeout=10)
print("held", flush=True)
sys.stdin.readline()
lease.release()
print("released", flush=True)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the lease on board-1 (3 s lease) until its stdin says otherwise."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), "3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=10)


def test_a_free_device_is_taken_and_given_back(tmp_path: Path) -> None:
    lease = DeviceLease("board-1", lock_dir=tmp_path, lease=5, owner="me")
    lease.acquire(timeout=1)
    assert lease.held
    current = lease.holder()
    assert current is not None and current.owner == "me" and current.pid == os.getpid()
    lease.release()
    assert not lease.held
    assert lease.holder() is None


def test_a_waiting_run_says_who_holds_the_device_and_gives_up(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    seen: list[Holder] = []
    lease = DeviceLease("board-1", lock_dir=tmp_path, lease=5)
    start = time.monotonic()
    with pytest.raises(LockTimeout) as excinfo:
        lease.acquire(timeout=0.5, on_wait=seen.append)
    assert time.monotonic() - start < 3
    assert len(seen) == 1 and seen[0].owner == "holder-script" and seen[0].pid == holder.pid
    message = str(excinfo.value)
    assert "'board-1'" in message and "holder-script" in message and f"pid {holder.pid}" in message
    assert "gave up after 0.5s" in message


def test_runs_take_turns_when_the_holder_releases(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("done\n")
    holder.stdin.flush()
    lease = DeviceLease("board-1", lock_dir=tmp_path, lease=5)
    lease.acquire(timeout=5)
    assert holder.stdout.readline().strip() == "released"
    lease.release()


def test_a_holder_killed_with_sigkill_releases_the_lease_within_its_lease(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    holder.kill()
    holder.wait(timeout=5)
    lease = DeviceLease("board-1", lock_dir=tmp_path, lease=5)
    start = time.monotonic()
    lease.acquire(timeout=3)  # the holder's lease was 3 s: it must be ours within that
    assert time.monotonic() - start < 3
    lease.release()


def test_a_hung_holder_loses_the_lease_when_it_expires(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    os.kill(holder.pid, signal.SIGSTOP)  # alive but no longer renewing
    lease = DeviceLease("board-1", lock_dir=tmp_path, lease=5)
    start = time.monotonic()
    lease.acquire(timeout=8)
    waited = time.monotonic() - start
    assert 0.5 < waited < 5, f"expected to wait for the 3 s lease to run out, waited {waited:.2f}s"
    lease.release()


def test_different_devices_do_not_block_each_other(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    other = DeviceLease("board-2", lock_dir=tmp_path, lease=5)
    other.acquire(timeout=0.2)
    other.release()


def test_lease_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lease must be positive, given 0"):
        DeviceLease("x", lock_dir=tmp_path, lease=0)
