"""Leases on exclusive devices, shared by every pytest process on the machine (xdist workers included).

A physical board can serve one test run at a time.  A device marked ``exclusive: true`` is taken
with a :class:`DeviceLease` before it starts and given back after it stops.

The lease is a small JSON record (who holds it, until when) next to a lock file whose ``flock`` is
held only for the few microseconds it takes to read or write the record.  The holder renews the
record from a background thread; so the lease ends

- at once when the holder releases it, or when the holder's process has died on this machine
  (its PID is gone or belongs to a newer process), and
- after ``lease`` seconds without renewal otherwise (a holder that hangs, or one on another machine
  sharing the lock folder).

A waiting run says who holds the device and gives up with :class:`~pytest_jumpstarter.errors.LockTimeout`
after its own deadline.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import FolderError, LockTimeout
from .waiting import Deadline

#: Where leases live unless the user says otherwise (``--jumpstarter-lock-dir`` / JUMPSTARTER_LOCK_DIR).
DEFAULT_LOCK_DIR = Path(os.environ.get("JUMPSTARTER_LOCK_DIR", "/tmp/pytest-jumpstarter-locks"))


@dataclass(frozen=True)
class Holder:
    """The record of who holds a lease."""

    token: str
    owner: str
    host: str
    pid: int
    pid_start: str
    acquired: float
    expires: float

    def describe(self) -> str:
        """Who holds it, for a waiting user: ``pytest pid 123 (tests/t.py::t) since 12:01:02``."""
        text = self.owner if str(self.pid) in self.owner else f"{self.owner} (pid {self.pid})"
        if self.host != _HOST:
            text += f" on {self.host.split(':')[0]}"
        return f"{text} since {time.strftime('%H:%M:%S', time.localtime(self.acquired))}"

    def is_over(self, now: float) -> bool:
        if now >= self.expires:
            return True
        # On this machine we can tell a dead holder at once instead of waiting for the lease to run out.
        return self.host == _HOST and process_start(self.pid) != self.pid_start


class DeviceLease:
    """An exclusive, expiring hold on the device named ``key``."""

    def __init__(
        self, key: str, *, lock_dir: Path | None = None, lease: float = 30.0, owner: str = ""
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be positive, given {lease}")
        self.key = key
        self.lease = lease
        self.owner = owner or f"pytest pid {os.getpid()}"
        folder = lock_dir or DEFAULT_LOCK_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FolderError(
                f"lock folder {folder} (--jumpstarter-lock-dir / $JUMPSTARTER_LOCK_DIR) cannot hold leases: "
                f"{'it or a parent is a file' if isinstance(exc, FileExistsError) else exc}; give a folder"
            ) from exc
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        self._record = folder / f"{safe}.lease"
        self._mutex = folder / f"{safe}.lock"
        self._token: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = False

    @property
    def held(self) -> bool:
        return self._token is not None

    def holder(self) -> Holder | None:
        """Who holds the lease now (``None`` if nobody, or if the last holder's lease is over)."""
        with self._locked():
            current = self._read()
        return current if current is not None and not current.is_over(time.time()) else None

    def acquire(self, timeout: float, on_wait: Callable[[Holder], None] | None = None) -> None:
        """Take the lease, waiting at most ``timeout`` seconds; ``on_wait`` is told once who we wait for."""
        if self.held:
            raise RuntimeError(f"lease on {self.key!r} is already held by this object; release() it first")
        deadline = Deadline(timeout, f"the lease on {self.key!r}")
        told = False
        while True:
            with self._locked():
                current = self._read()
                if current is None or current.is_over(time.time()):
                    self._token = uuid.uuid4().hex
                    self._write(self._new_record())
                    break
            if not told and on_wait is not None:
                on_wait(current)
                told = True
            if deadline.expired:
                raise LockTimeout(
                    f"exclusive device {self.key!r} is held by {current.describe()}; "
                    f"gave up after {timeout:g}s (raise lock_timeout, or end that run)"
                )
            # Polling the record is the wait: flock cannot wake us when a lease merely expires.
            time.sleep(deadline.remaining(0.1))
        self.lost = False
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.key}", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Give the lease back.  Safe to call when not held."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        if self._token is None:
            return
        with self._locked():
            current = self._read()
            if current is not None and current.token == self._token:
                self._record.unlink(missing_ok=True)
        self._token = None

    def __enter__(self) -> DeviceLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with self._locked():
                current = self._read()
                if current is None or current.token != self._token:
                    # Taken after our lease ran out (we were stopped or starved): say so, don't fight.
                    # The plugin checks `lost` after each test.
                    self.lost = True
                    return
                self._write(self._new_record(acquired=current.acquired))

    def _new_record(self, acquired: float | None = None) -> Holder:
        now = time.time()
        assert self._token is not None
        return Holder(
            token=self._token,
            owner=self.owner,
            host=_HOST,
            pid=os.getpid(),
            pid_start=process_start(os.getpid()),
            acquired=acquired if acquired is not None else now,
            expires=now + self.lease,
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._mutex, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> Holder | None:
        try:
            data = json.loads(self._record.read_text())
            return Holder(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            # A torn or foreign record holds nothing; the next writer replaces it.
            return None

    def _write(self, record: Holder) -> None:
        tmp = self._record.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, self._record)


def process_start(pid: int) -> str:
    """The start time of process ``pid`` (to tell a reused PID from the original), or "" if it is gone.

    A zombie is gone: it has exited (its files and locks released) and waits only to be reaped, which
    for a killed xdist worker may come after its replacement has started.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may contain spaces and parentheses; fields after the last ")" are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] == "Z" else fields[19]


def boot_id() -> str:
    """This boot of this machine (processes of an earlier boot are all gone)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_HOST = socket.gethostname() + ":" + boot_id()
