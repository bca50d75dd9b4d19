"""A console timeout says what QEMU's process and run state are; savevm hints fit their cause."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from pytest_jumpstarter_qemu.diagnosis import diagnose, process_state
from pytest_jumpstarter_qemu.qmp import Events
from pytest_jumpstarter_qemu.snapshot import savevm_hint

from pytest_jumpstarter.errors import Halted


def test_a_stopped_process_is_named_as_stopped_without_asking_qmp() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        proc.send_signal(signal.SIGSTOP)
        # The stop lands when the kernel next schedules the process: poll its state, bounded.
        deadline = time.monotonic() + 5
        while process_state(proc.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        found = diagnose(proc.pid, None, Events())
        assert found is not None and f"pid {proc.pid}) is stopped by a signal (process state T" in found
        assert isinstance(found, Halted)  # a timed-out command on it is not interrupted in vain
    finally:
        proc.kill()
        proc.wait()


def test_a_gone_process_is_named_as_exited() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    found = diagnose(proc.pid, None, Events())
    assert found == f"QEMU (pid {proc.pid}) has exited" and isinstance(found, Halted)


def test_savevm_hint_blames_a_full_disk_not_qcow2() -> None:
    state = Path("/tmp/run/vmstate.qcow2")
    full = savevm_hint("Error: Error while writing VM state: No space left on device", state)
    assert "/tmp/run is full" in full and "qcow2" not in full
    raw = savevm_hint("Error: Device 'disk-vda' is writable but does not support snapshots", state)
    assert "must be qcow2" in raw
    assert "qcow2" not in savevm_hint("Error: something else", state)
