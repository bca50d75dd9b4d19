"""One way to run a child process (QEMU, qemu-img, servers, decompressors).

Every child:

- gets its own session (``setsid``), so a signal for its group reaches everything it started and
  nothing of ours;
- dies with its parent: it is exec'd through util-linux's ``setpriv --pdeathsig KILL``, which sets
  ``PR_SET_PDEATHSIG`` and then execs the real program (same pid); spawning returns once that exec
  happened, so a parent SIGKILLed right after cannot leave the child behind.  ``preexec_fn`` would do it in
  Python between fork and exec, which is unsafe in a process with threads (and this one has the QMP
  loop, relays, readers).  Measured on the project's machine kind, spawning ``/bin/true``: plain 0.65 ms,
  through ``setpriv`` 1.8 ms, with a ``preexec_fn`` prctl 4.2 ms, through ``python -c`` 33 ms.  Where
  ``setpriv`` is missing the child still gets its session and a bounded stop, but a SIGKILLed
  pytest leaves it behind;
- is stopped with a bound: SIGTERM to its process group, a grace period, then SIGKILL;
- keeps a bounded tail of its stderr for error messages (``stderr_tail()``).

Note: the kernel sends the parent-death signal when the *thread* that spawned the child ends.  Spawn
long-lived children from a thread that lives as long as they should (pytest's main thread does).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from .errors import CommandFailed, CommandNotFound, DriverError
from .waiting import Deadline

#: How much of a child's stderr is kept for error messages.
TAIL_BYTES = 16 * 1024

#: ``stderr=`` choices besides a file path: keep a tail in memory, merge into stdout, or drop it.
StderrMode = Literal["tail", "stdout", "devnull"]


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def _armed(pid: int, setpriv: str, seconds: float = 2.0) -> None:
    """Wait until ``setpriv`` has set the parent-death signal: it then execs the real program.

    Until that moment a parent killed at once would leave the child running forever.  Bounded: a
    child that is slow to exec is only a child that may outlive a SIGKILLed parent, never a hang.
    """
    own = os.path.realpath(setpriv)
    deadline = Deadline(seconds, f"pid {pid} to exec past setpriv")
    while not deadline.expired:
        try:
            if os.readlink(f"/proc/{pid}/exe") != own:
                return
        except OSError:
            return  # gone, or a zombie: nothing left to arm
        time.sleep(0.0002)  # the exec follows within a millisecond or two; nothing signals it


def find_program(program: str, device: str, hint: str = "") -> str:
    """The full path of ``program`` on PATH; :class:`CommandNotFound` (with ``hint``) if it is not there."""
    found = shutil.which(program)
    if found is None:
        raise CommandNotFound(
            device, f"{program!r} is not installed (not found on PATH){hint and ' ' + hint}"
        )
    return found


class Child:
    """A running child process in its own session that dies with us.  Use :func:`spawn` to make one."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        device: str,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | Literal["stderr"] | None = subprocess.DEVNULL,
        stderr: StderrMode | Path = "tail",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.device = device
        self._stderr_path: Path | None = None
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._tail_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        setpriv = _setpriv()
        command = [setpriv, "--pdeathsig", "KILL", "--", *self.argv] if setpriv else self.argv
        err: int | IO[bytes]
        with contextlib.ExitStack() as stack:
            if isinstance(stderr, Path):
                self._stderr_path = stderr
                err = stack.enter_context(open(stderr, "wb"))
            else:
                err = {"tail": subprocess.PIPE, "stdout": subprocess.STDOUT, "devnull": subprocess.DEVNULL}[
                    stderr
                ]
            if stdout == "stderr" and not isinstance(stderr, Path):
                raise ValueError("stdout='stderr' needs stderr to be a file")
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                command,
                stdin=stdin,
                stdout=err if stdout == "stderr" else stdout,
                stderr=err,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        if setpriv:
            _armed(self.popen.pid, setpriv)
        self.pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(self.popen.pid)
        # The tail reader owns the stderr pipe: communicate() and friends must not read it too.
        self._stderr_stream, self.popen.stderr = self.popen.stderr, None
        if stderr == "tail":
            self._reader = threading.Thread(target=self._read_stderr, name=f"stderr-{device}", daemon=True)
            self._reader.start()

    # --- state -----------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it exited (negative: killed by that signal), else None."""
        return self.popen.poll()

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def poll(self) -> int | None:
        """As :meth:`subprocess.Popen.poll`: the exit status if it exited, else None."""
        return self.popen.poll()

    @property
    def stdin(self) -> IO[bytes] | None:
        return self.popen.stdin

    @property
    def stdout(self) -> IO[bytes] | None:
        return self.popen.stdout

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the child to exit (reaping it); True if it has."""
        if self.popen.returncode is not None:
            return True
        if self.pidfd is not None and timeout is not None:
            # A pidfd becomes readable when the process exits: no polling loop.
            with selectors.DefaultSelector() as sel:
                sel.register(self.pidfd, selectors.EVENT_READ)
                sel.select(max(0.0, timeout))
            return self.popen.poll() is not None
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (its session); a gone group is fine."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    # --- ending ----------------------------------------------------------------------------------

    def stop(self, grace: float = 2.0, kill_grace: float = 5.0) -> int | None:
        """Stop the child, bounded: SIGTERM to its group, ``grace`` s, SIGKILL, ``kill_grace`` s.

        Returns its exit status (None only if even SIGKILL did not end it within ``kill_grace``).
        """
        if self.running:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_grace)):
                self.signal_group(sig)
                if sig == signal.SIGTERM:
                    # A stopped process (SIGSTOP, a debugger's job control) keeps SIGTERM pending
                    # until it runs again: wake it, so it ends as asked instead of by SIGKILL.
                    self.signal_group(signal.SIGCONT)
                if self.wait(wait):
                    break
        # Whatever else the child started in its session must not outlive it either.
        self.signal_group(signal.SIGKILL)
        return self.popen.poll()

    def kill(self, timeout: float = 5.0) -> int | None:
        """SIGKILL the child's group at once (a crash, as far as anyone talking to it can tell)."""
        self.signal_group(signal.SIGKILL)
        self.wait(timeout)
        return self.popen.poll()

    def close(self) -> None:
        """Stop the child if it still runs and release its pidfd and pipes.  Safe to call twice."""
        self.stop()
        self.release()

    def release(self) -> None:
        """Release the pidfd and pipes of a child that has exited, leaving its session alone.

        For a command whose job is to start something that outlives it (a power-on that starts a
        console server); :meth:`close` would end that too.
        """
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._reader is not None:
            self._reader.join(2.0)
        if self._stderr_stream is not None:
            with contextlib.suppress(OSError):
                self._stderr_stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- stderr ----------------------------------------------------------------------------------

    def _read_stderr(self) -> None:
        stream = self._stderr_stream
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            while chunk := stream.read1(4096):  # type: ignore[attr-defined]
                with self._tail_lock:
                    self._tail.append(chunk)
                    self._tail_size += len(chunk)
                    while self._tail_size - len(self._tail[0]) >= TAIL_BYTES:
                        self._tail_size -= len(self._tail.popleft())

    def stderr_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines the child wrote to stderr (bounded: at most ``TAIL_BYTES`` read)."""
        if self._stderr_path is not None:
            try:
                with open(self._stderr_path, "rb") as f:
                    f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
                    data = f.read()
            except OSError:
                return ""
        else:
            if self._reader is not None and not self.running:
                self._reader.join(1.0)  # let it read what the child wrote before it exited
            with self._tail_lock:
                data = b"".join(self._tail)
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<Child {self.argv[0]} pid={self.popen.pid} returncode={self.popen.returncode}>"


def spawn(
    argv: Sequence[str],
    *,
    device: str,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | Literal["stderr"] | None = subprocess.DEVNULL,
    stderr: StderrMode | Path = "tail",
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    hint: str = "",
) -> Child:
    """Start ``argv`` as a :class:`Child`; a program not on PATH is :class:`CommandNotFound` (+ ``hint``)."""
    program = find_program(str(argv[0]), device, hint)
    return Child(
        [program, *argv[1:]], device=device, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd
    )


def run(
    argv: Sequence[str],
    *,
    device: str,
    timeout: float,
    what: str | None = None,
    input: bytes | None = None,
    hint: str = "",
) -> str:
    """Run a short command to its end, bounded; return its stdout (text).

    A missing program is :class:`CommandNotFound` (its message ends with ``hint``), a non-zero exit
    :class:`CommandFailed` with the stderr tail, and one that outlives ``timeout`` is stopped (its
    whole group) and reported with what it was doing (``what``, default: the command line).
    """
    what = what or " ".join(str(a) for a in argv)
    child = spawn(
        argv,
        device=device,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr="tail",
        hint=hint,
    )
    deadline = Deadline(timeout, f"{what} to finish")
    try:
        try:
            out, _ = child.popen.communicate(input, timeout=deadline.remaining())
        except subprocess.TimeoutExpired:
            child.stop(grace=1.0)
            raise deadline.error(device, f"stderr: {child.stderr_tail(5) or '(none)'}") from None
        child.wait(deadline.remaining(cap=2.0))
        status = child.returncode
        if status != 0:
            tail = child.stderr_tail()
            raise CommandFailed(
                device,
                f"{what} failed (exit status {status}): {tail.strip() or '(no stderr)'}",
                returncode=status,
                stderr=tail,
            )
        return out.decode("utf-8", "replace")
    finally:
        child.close()


__all__ = ["Child", "CommandFailed", "CommandNotFound", "DriverError", "find_program", "run", "spawn"]
