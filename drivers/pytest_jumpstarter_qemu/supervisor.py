"""One qemu-system process: a paused launch on sockets we listen on, a bounded stop, the exit diagnosis.

QEMU starts paused (``-S``) and connects to two unix sockets we listen on (console and QMP), so
nothing it prints is lost and a QEMU that cannot start is seen at once: its process exits, and we
wait on its pidfd, not in a polling loop.  The board lets the guest run (``cont``) once it holds both.

The process is a :class:`pytest_jumpstarter.process.Child`: its own session, SIGKILLed if pytest
dies however it dies (even SIGKILL), stopped with a bound.
"""

from __future__ import annotations

import contextlib
import selectors
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_jumpstarter.errors import CommandNotFound, DeviceExited, DriverError
from pytest_jumpstarter.process import Child
from pytest_jumpstarter.waiting import Deadline
from pytest_jumpstarter.workfiles import socket_dir

from .cmdline import socket_args
from .diagnosis import process_state
from .qmp import Qmp
from .qmp import prepare as prepare_qmp

#: How long QEMU may take to connect to its sockets and answer the QMP handshake.
CONNECT_TIMEOUT = 30.0


class QemuProcess:
    """One launch of qemu-system, from the paused start to its (bounded) end."""

    def __init__(self, device: str, command: Sequence[str], workdir: Path) -> None:
        self.device = device
        self.command = list(command)
        self.stderr_path = workdir / "qemu.stderr"
        #: The folder of the two listening sockets; removed as soon as QEMU has connected.
        self.sockdir: Path | None = None
        self.child: Child | None = None
        self.qmp: Qmp | None = None
        self.console_sock: socket.socket | None = None
        self.launched = 0.0

    @classmethod
    def launch(
        cls, device: str, command: Sequence[str], workdir: Path, progress: Callable[[str], None]
    ) -> QemuProcess:
        """Start QEMU paused and connect its console and QMP.  On any failure nothing is left."""
        if shutil.which(command[0]) is None:
            raise CommandNotFound(
                device, f"QEMU binary {command[0]!r} not found on PATH (install it, or set binary for arch)"
            )
        qemu = cls(device, command, workdir)
        try:
            qemu._start(progress)
        except BaseException:
            qemu.close()
            raise
        return qemu

    def _start(self, progress: Callable[[str], None]) -> None:
        # Unix socket paths are limited to 107 bytes; a pytest tmp path, or $TMPDIR itself, can be longer.
        # The folder has an owner record, so a run killed before QEMU connects leaves nothing for long.
        self.sockdir = socket_dir("jsq-", longest_name=len("console.sock"))
        paths = (self.sockdir / "console.sock", self.sockdir / "qmp.sock")
        with contextlib.ExitStack() as stack:
            listeners = []
            for path in paths:
                lsock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                lsock.bind(str(path))
                lsock.listen(1)
                listeners.append(lsock)
            self.command = [*self.command, *socket_args(*paths)]
            self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
            (self.stderr_path.parent / "qemu.cmdline").write_text(shlex.join(self.command) + "\n")
            self.launched = time.monotonic()
            self.child = Child(self.command, device=self.device, stdout="stderr", stderr=self.stderr_path)
            progress(f"{self.device}: QEMU pid {self.child.pid} starting")
            prepare_qmp()  # in parallel with QEMU's own start-up
            deadline = Deadline(CONNECT_TIMEOUT, f"QEMU (pid {self.child.pid}) to connect to its sockets")
            console = stack.enter_context(self._accept(listeners[0], deadline, "the console socket"))
            qmp = stack.enter_context(self._accept(listeners[1], deadline, "the QMP socket"))
            # Connected: the socket files have served their purpose.  Removing them now means that
            # even a SIGKILLed pytest (which cannot clean up) leaves no folder behind.
            for lsock in listeners:
                lsock.close()
            shutil.rmtree(self.sockdir, ignore_errors=True)
            self.sockdir = None
            try:
                self.qmp = Qmp(self.device, qmp, timeout=max(1.0, deadline.remaining(CONNECT_TIMEOUT)))
            except DriverError:
                if self.wait_exit(2.0):  # QEMU died during the handshake: say that, not "QMP failed"
                    raise self.exited("while starting (during the QMP handshake)") from None
                raise
            # The console socket now belongs to the board's console (QMP's to Qmp): keep both open.
            stack.pop_all()
            self.console_sock = console

    def _accept(self, listener: socket.socket, deadline: Deadline, what: str) -> socket.socket:
        """Wait for QEMU to connect to ``listener``; fail at once if QEMU exits instead."""
        child = self.child
        assert child is not None
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            if child.pidfd is not None:
                sel.register(child.pidfd, selectors.EVENT_READ)
            while True:
                if not child.running:
                    raise self.exited(f"while starting (before connecting to {what})")
                if deadline.expired:
                    raise deadline.error(
                        self.device,
                        f"not connected to {what}\ncommand: {shlex.join(self.command)}\n"
                        f"stderr:\n{self.stderr_tail()}",
                    )
                # Without a pidfd, wake up now and then to notice an exit.
                ready = sel.select(
                    deadline.remaining() if child.pidfd is not None else deadline.remaining(0.05)
                )
                for key, _ in ready:
                    if key.fileobj is listener:
                        conn, _ = listener.accept()
                        return conn

    # --- state -----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    @property
    def stopped_by_signal(self) -> bool:
        """QEMU is stopped (SIGSTOP, SIGTSTP, a debugger): it runs nothing, QMP included."""
        return self.child is not None and process_state(self.child.pid) in ("T", "t")

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status once it exited (negative: killed by that signal)."""
        return self.child.returncode if self.child is not None else None

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for QEMU to exit; True if it did."""
        return self.child is None or self.child.wait(timeout)

    # --- diagnosis -------------------------------------------------------------------------------

    def stderr_tail(self, lines: int = 15) -> str:
        return self.child.stderr_tail(lines) if self.child is not None else ""

    def exited(self, context: str, console_tail: str = "") -> DeviceExited:
        """QEMU is gone: its exit status, command line, stderr and console tails, and when it was seen."""
        return DeviceExited(
            self.device,
            returncode=self.returncode,
            command=self.command,
            stderr_tail=self.stderr_tail(),
            console_tail=console_tail,
            context=f"(QEMU pid {self.pid}) {context}",
        )

    # --- ending ----------------------------------------------------------------------------------

    def stop(self, powerdown_timeout: float, drain: Callable[[], None]) -> None:
        """End QEMU, bounded: ACPI powerdown if asked, QMP quit, SIGTERM, SIGKILL; then :meth:`close`."""
        try:
            # A QEMU stopped by a signal answers neither powerdown nor quit: SIGTERM (and SIGCONT) at once.
            if self.running and self.qmp is not None and not self.stopped_by_signal:
                if powerdown_timeout > 0:
                    with contextlib.suppress(DriverError):
                        self.qmp.execute("system_powerdown", timeout=2.0)
                        self.wait_exit(powerdown_timeout)
                if self.running:
                    # Console output nobody has read can wedge QEMU's main loop (seen with U-Boot
                    # autobooting after a reset: QMP quit and SIGTERM went unanswered for 7 s);
                    # reading it first lets quit work at once, and the transcript keeps it.
                    drain()
                    with contextlib.suppress(DriverError):
                        self.qmp.execute("quit", timeout=2.0)
                    self.wait_exit(3.0)
            if self.child is not None:
                self.child.stop(grace=2.0, kill_grace=5.0)
        finally:
            self.close()

    def close(self) -> None:
        """Release QMP, the process (killed if it still runs: never leave a QEMU behind) and the sockets."""
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.child is not None:
            if self.child.running:
                self.child.kill()
            self.child.close()
        if self.sockdir is not None:
            shutil.rmtree(self.sockdir, ignore_errors=True)
            self.sockdir = None


def process_memory(pid: int, peak: bool = False) -> int | None:
    """A process's resident memory in bytes (``VmRSS``, or its peak ``VmHWM``); None if it is gone."""
    field = "VmHWM:" if peak else "VmRSS:"
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
