#!/usr/bin/env python3
"""A stand-in for a lab's relay and console server: ``lab_relay.py STATE_DIR on|off|status``.

``on`` starts the board (the command line in STATE_DIR/board.json, a QEMU whose serial is a TCP
server) detached, records its pid in STATE_DIR/board.pid and every pid it ever started in
STATE_DIR/pids.log, and returns once the console port listens (or fails with QEMU's stderr).
``off`` stops the recorded process (SIGTERM, then SIGKILL, each bounded) and waits for it to be gone.
``status`` exits 0 if the board runs, 3 if not.  Only the standard library: a relay tool is a
program of its own, not part of the plugin.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


def listening(port: int) -> bool:
    """Whether something listens on TCP ``port`` (read from /proc, so no connection is made)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def running(state: Path) -> int | None:
    """The pid of the board process if it still runs (and is the one we started)."""
    try:
        pid = int((state / "board.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    marker = json.loads((state / "board.json").read_text())["marker"]
    if marker.encode() not in cmdline or stat.rsplit(")", 1)[1].split()[0] == "Z":
        return None
    return pid


def wait_gone(pidfd: int, timeout: float) -> bool:
    readable, _, _ = select.select([pidfd], [], [], timeout)
    return bool(readable)


def on(state: Path) -> int:
    if running(state) is not None:
        return 0
    config = json.loads((state / "board.json").read_text())
    with open(state / "board.stderr", "ab") as err:
        proc = subprocess.Popen(
            config["argv"], stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
    (state / "board.pid").write_text(str(proc.pid))
    with open(state / "pids.log", "a") as log:
        log.write(f"{proc.pid}\n")
    deadline = time.monotonic() + 20.0
    while not listening(config["port"]):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (state / "board.stderr").read_text(errors="replace")[-1000:]
            sys.stderr.write(f"board did not come up (exit status {proc.poll()}): {tail}\n")
            return 1
        time.sleep(0.02)  # nothing signals that QEMU's listening socket exists
    return 0


def off(state: Path) -> int:
    pid = running(state)
    if pid is not None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None
        if pidfd is not None:
            try:
                for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                    if wait_gone(pidfd, grace):
                        break
                else:
                    sys.stderr.write(f"board process {pid} did not exit after SIGKILL\n")
                    return 1
            finally:
                os.close(pidfd)
    (state / "board.pid").unlink(missing_ok=True)
    return 0


def main() -> int:
    state, action = Path(sys.argv[1]), sys.argv[2]
    if action == "on":
        return on(state)
    if action == "off":
        return off(state)
    if action == "status":
        return 0 if running(state) is not None else 3
    sys.stderr.write(f"usage: lab_relay.py STATE_DIR on|off|status (found {action!r})\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
