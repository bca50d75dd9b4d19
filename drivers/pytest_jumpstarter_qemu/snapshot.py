"""``reset: snapshot``: the booted state saved once (HMP ``savevm``), restored before each test (``loadvm``).

The RAM and device state go into a small qcow2 state drive that the guest never sees; every disk
must be qcow2 too (raw disks cannot hold snapshots: saving then fails, and each reset says why, so
the plugin cold boots instead).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from pytest_jumpstarter.console import Console
from pytest_jumpstarter.driver import DeviceContext
from pytest_jumpstarter.errors import ConsoleTimeout

from .qemu_img import create_qcow2

#: The internal snapshot ``reset: snapshot`` restores.
SNAPSHOT_TAG = "jumpstarter-pristine"


class SnapshotHost(Protocol):
    """What a snapshot needs of its board."""

    timings: dict[str, float]

    @property
    def device_name(self) -> str: ...
    @property
    def ctx(self) -> DeviceContext[Any]: ...

    @property
    def console(self) -> Console: ...
    def hmp(self, command: str, timeout: float = 10.0) -> str: ...
    def sync_console(self, timeout: float, command: str = "true") -> None: ...


def _hmp_error(out: str) -> str:
    """An HMP error as one line: ``Error: Device 'x' is ...`` -> ``Device 'x' is ...``."""
    text = " ".join(out.split())
    return text[len("Error: ") :] if text.startswith("Error: ") else text


class Snapshots:
    """The state drive of one board, the snapshot saved in it, or why there is none."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted
        self.state_drive: Path | None = None
        self.saved: str | None = None
        #: Why the booted state could not be saved (so ``reset: snapshot`` cold boots), else None.
        self.error: str | None = None

    def prepare(self, device: str, workdir: Path) -> None:
        if not self.wanted:
            return
        path = workdir / "vmstate.qcow2"
        # The virtual size hardly matters: internal snapshots store the VM state beyond it.
        create_qcow2(
            device,
            path,
            size="1M",
            failure=f"reset: snapshot needs a qcow2 state drive; qemu-img could not create {path}",
        )
        self.state_drive = path

    def remove_files(self) -> None:
        if self.state_drive is not None:
            self.state_drive.unlink(missing_ok=True)
            self.state_drive = None
        self.saved = None

    def save(self, board: SnapshotHost, console_timeout: float, boot_timeout: float) -> None:
        """Save the booted state (RAM, devices, every disk), right after ready.

        A board that cannot be saved still runs: each restore then returns the reason.
        """
        self.saved = None
        if self.state_drive is None:
            self.error = "the board was started without its snapshot state drive"
            return
        # Save a shell idle at its prompt with nothing left unread: each test starts from exactly there.
        # Linux makes its boot id on first read: read it now, or each restore would make a new one.
        board.sync_console(console_timeout, "cat /proc/sys/kernel/random/boot_id")
        board.console.drain(quiet=0.05, limit=1.0)
        started = time.monotonic()
        out = board.hmp(f"savevm {SNAPSHOT_TAG}", timeout=boot_timeout).strip()
        if out:
            self.error = f"savevm failed: {_hmp_error(out)} ({savevm_hint(out, self.state_drive)})"
            board.ctx.progress(f"{board.device_name}: {self.error}")
            return
        self.saved, self.error = SNAPSHOT_TAG, None
        board.timings["savevm"] = time.monotonic() - started
        board.ctx.progress(f"{board.device_name}: booted state saved in {board.timings['savevm']:.2f}s")

    def restore(self, board: SnapshotHost, console_timeout: float, boot_timeout: float) -> str | None:
        """``loadvm`` in place; None when restored, else why not (the caller then cold boots).

        The console socket stays connected; what the old state printed is dropped and a marker
        command proves the shell answers.
        """
        if self.saved is None:
            return self.error or "no booted state was saved (reset: snapshot was not set at start)"
        started = time.monotonic()
        out = board.hmp(f"loadvm {self.saved}", timeout=boot_timeout).strip()
        board.timings["loadvm"] = time.monotonic() - started
        if out:
            # A failed loadvm leaves the VM stopped, in no known state.
            return f"loadvm failed: {_hmp_error(out)}"
        board.console.drain(quiet=0.0, limit=0.5)
        try:
            board.sync_console(min(10.0, console_timeout))
        except ConsoleTimeout as exc:
            return f"the console did not answer after loadvm: {str(exc).splitlines()[0]}"
        board.timings["restore"] = time.monotonic() - started
        return None


def savevm_hint(out: str, state_drive: Path) -> str:
    """What to do about a failed savevm, from what QEMU said: the hint must fit the cause."""
    text = out.lower()
    if "no space left" in text or "enospc" in text or "(-28)" in text:
        return f"the file system holding {state_drive.parent} is full: free space there, or use reset: reboot"
    if "does not support" in text and "snapshot" in text:
        return (
            "every writable disk must be qcow2 for snapshots; give raw disks as qcow2, or use reset: reboot"
        )
    return "use reset: reboot if this persists"
