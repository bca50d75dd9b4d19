"""Why a QEMU board printed nothing: its process state and QEMU's own run state, for a console timeout.

A guest that stops printing is not always hung.  QEMU pauses the VM on a disk I/O error (a full
disk: "No space left on device") or an emulation failure, and a process stopped by SIGSTOP runs
nothing at all.  A console timeout that says which of these it found saves the user from reading a
40 s wait as a slow guest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_jumpstarter.errors import Halted, JumpstarterError

from .qmp import Events, Qmp

#: QEMU's RunState values that mean the guest does not run, and what each means.
_STOPPED = {
    "io-error": "QEMU paused the VM on a disk I/O error",
    "internal-error": "QEMU stopped the VM on an internal (emulation) error; see QEMU's stderr",
    "guest-panicked": "the guest panicked (pvpanic) and QEMU stopped it",
    "shutdown": "the guest shut down and QEMU is waiting to exit",
    "paused": "the VM is paused (a QMP stop, or the monitor)",
    "suspended": "the guest is suspended",
    "watchdog": "a watchdog fired and QEMU paused the VM",
    "prelaunch": "the VM was never started (cont not sent)",
}


def process_state(pid: int) -> str:
    """The one-letter state of process ``pid`` (R, S, T stopped, t traced, Z zombie), or "" if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def diagnose(pid: int | None, qmp: Qmp | None, events: Events) -> str | None:
    """What stops the guest from printing, in one or two sentences, or ``None`` if nothing was found."""
    if pid is None:
        return None
    state = process_state(pid)
    if state in ("T", "t"):
        # A stopped QEMU cannot answer QMP either: don't wait for it.
        return Halted(
            f"QEMU (pid {pid}) is stopped by a signal (process state {state}: SIGSTOP, SIGTSTP or a "
            "debugger); the guest cannot run until it gets SIGCONT"
        )
    if state in ("", "Z"):
        return Halted(f"QEMU (pid {pid}) has exited")
    if qmp is None:
        return None
    try:
        status = qmp.execute("query-status", timeout=2.0)
    except JumpstarterError as exc:
        return f"QEMU (pid {pid}, process state {state}) did not answer QMP query-status: {exc}"
    run_state = str(status.get("status", "?")) if isinstance(status, dict) else "?"
    if run_state == "running":
        return f"QEMU reports the VM running (pid {pid}): the guest runs but printed nothing awaited"
    found = f"QEMU run state: {run_state}: {_STOPPED.get(run_state, 'the guest is not running')}"
    if run_state == "io-error":
        found += _io_error(events)
    # A state of _STOPPED lasts until someone acts; the others (migration, savevm) pass by themselves.
    return Halted(found) if run_state in _STOPPED else found


def _io_error(events: Events) -> str:
    errors = [e for e in events if e.get("event") == "BLOCK_IO_ERROR"]
    if not errors:
        return ""
    data: dict[str, Any] = errors[-1].get("data", {})
    reason = data.get("reason") or ("No space left on device" if data.get("nospace") else "unknown")
    where = data.get("node-name") or data.get("device") or "?"
    text = f" ({reason}; {data.get('operation', '?')} on {where}, {len(errors)} error event(s))"
    if data.get("nospace"):
        text += ": the file system holding the board's disk files is full"
    return text
