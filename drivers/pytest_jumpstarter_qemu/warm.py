"""Warm starts: a QEMU board's booted state kept across runs (:mod:`.statecache`), restored instead of a boot.

After a cold boot reaches ready, the board is stopped, its state sent with QMP ``migrate`` to the
file (``fd:``, RAM and devices; the stream skips zero pages), and continued; the next power-on on
the same key starts QEMU with ``-incoming defer``, receives the file with ``migrate-incoming``,
continues, proves the shell answers and sets the guest clock in the same command.

The key covers what decides the booted state: the QEMU binary (path, size, mtime, ``--version``),
the command line without per-run paths, sockets and ports, the content of kernel, initrd, bios and
dtb, the ready pattern and shell, and :data:`.statecache.STATE_FORMAT`.  Boards with disks are not
cached (their booted state includes what the boot wrote to them), nor ``autostart: false`` boards
(a flasher writes their disk first): the reason is in :attr:`WarmStart.off_reason`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_jumpstarter.errors import DriverError, JumpstarterError
from pytest_jumpstarter.process import run
from pytest_jumpstarter.waiting import Deadline

from .cmdline import RunFiles, command_line
from .config import QemuSettings
from .qmp import Qmp
from .statecache import FileFacts, StateCache, default_dir, file_hash, make_key

if TYPE_CHECKING:
    from .board import QemuBoard

MODES = ("off", "read", "write", "on")


@dataclass(frozen=True)
class CacheOptions:
    """The run's cache options (``--jumpstarter-cache``, ``--jumpstarter-cache-dir``)."""

    mode: str = "off"
    folder: Path | None = None

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> CacheOptions:
        mode = extra.get("cache_mode") or "off"
        folder = extra.get("cache_dir")
        return cls(mode if mode in MODES else "off", Path(folder) if folder else None)

    @property
    def reads(self) -> bool:
        return self.mode in ("read", "on")

    @property
    def writes(self) -> bool:
        return self.mode in ("write", "on")

    def cache(self) -> StateCache:
        return StateCache(self.folder or default_dir())


def off_reason(config: QemuSettings, mode: str) -> str | None:
    """Why this board keeps no booted state, or None when it may."""
    if mode == "off":
        return "--jumpstarter-cache=off"
    if not config.cache:
        return "cache: false"
    if config.disks:
        return "it has disks (their booted content is not kept with the state)"
    if not config.autostart:
        return "autostart: false (the state depends on what is written before power-on)"
    return None


def qemu_identity(executable: str, facts: FileFacts | None = None) -> list[Any]:
    """What identifies a QEMU binary: its path, size, mtime and first ``--version`` line."""
    path = shutil.which(executable)
    if path is None:
        return [executable, "not found"]
    st = Path(path).stat()

    def version(binary: Path) -> str:
        out = run([str(binary), "--version"], device="qemu", timeout=10.0)
        return out.splitlines()[0] if out else ""

    return [path, st.st_size, st.st_mtime_ns, (facts or FileFacts(None)).get(Path(path), "version", version)]


def key_parts(
    config: QemuSettings, accel: str, snapshot: bool, facts: FileFacts | None = None
) -> dict[str, Any]:
    """Everything that decides the booted state, with per-run paths replaced by fixed ones."""
    tftp = config.user_network is not None and config.network.tftp
    files = RunFiles(
        name="warm",
        tftp_root=Path("/run/tftp") if tftp else None,
        state_drive=Path("/run/state.qcow2") if snapshot else None,
    )
    return {
        "qemu": qemu_identity(config.executable, facts),
        "command": command_line(config, files, accel),
        "files": {key: file_hash(path, facts) for key, path in config.files.items() if path is not None},
        "ready": [config.shell, config.ready],
    }


def wait_migration(qmp: Qmp, since: int, deadline: Deadline, device: str) -> None:
    """Wait for the MIGRATION event that says ``completed``; ``failed`` is an error."""
    while True:
        event = qmp.events.wait("MIGRATION", deadline.remaining(600.0), since, device)
        since = next(i for i, e in enumerate(qmp.events) if i >= since and e is event) + 1
        status = event.get("data", {}).get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            detail = qmp.execute("query-migrate", timeout=5.0).get("error-desc", "no detail")
            raise DriverError(device, f"migration {status}: {detail}")


#: ``max-bandwidth`` for a save: QEMU's default, 128 MiB/s (``MAX_THROTTLE``), is meant for a live
#: migration sharing a network link; it made a 98 MiB save of the stopped demo guest take 0.76 s
#: instead of 0.12-0.18 s (measured, QEMU 7.2).  The guest is stopped: nothing to share with.
SAVE_BANDWIDTH = 64 * 1024**3
#: The state file goes to QEMU as a descriptor (``fd:``), not through ``exec:cat``: no shell, no
#: ``cat``, no pipe of 64 KiB between them (a load took 0.070 s against 0.104 s, medians of 5).
_FD_NAME = "jumpstarter-state"


def _events_on(qmp: Qmp) -> None:
    qmp.execute(
        "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}, timeout=5.0
    )


def receive_state(qmp: Qmp, state: Path, timeout: float, device: str) -> None:
    """Load ``state`` into a QEMU started with ``-incoming defer`` (it stays paused)."""
    _events_on(qmp)
    since = len(qmp.events)
    _pass_file(qmp, state, os.O_RDONLY, device)
    qmp.execute("migrate-incoming", {"uri": f"fd:{_FD_NAME}"}, timeout=5.0)
    wait_migration(qmp, since, Deadline(timeout, f"the booted state {state} to load"), device)


def _pass_file(qmp: Qmp, path: Path, flags: int, device: str) -> None:
    """Open ``path`` and hand QEMU the descriptor for ``fd:`` (our copy is closed again).  A file
    that cannot be opened (an entry evicted by another run meanwhile) is a :class:`DriverError`,
    so the caller boots cold instead."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DriverError(device, f"cannot open the booted state {path}: {exc.strerror}") from exc
    try:
        qmp.send_fd(fd, _FD_NAME)
    finally:
        os.close(fd)


def send_state(
    qmp: Qmp, state: Path, timeout: float, device: str, stopped: Callable[[], object] | None = None
) -> None:
    """Stop the guest, write its state to ``state``, and let it run again.

    ``stopped`` runs once the guest is stopped, before the state is taken (to read what it had
    printed: a stopped guest prints nothing more, so no quiet period needs waiting for).

    QEMU sends the ``completed`` event before its migration thread sets the run state to
    ``postmigrate``: a ``cont`` in between is undone (seen on the demo U-Boot board, whose small
    state completes at once: its console went silent, QEMU said ``postmigrate``).  So ``cont``
    waits for ``postmigrate``, and the guest must be seen running afterwards.
    """
    _events_on(qmp)
    qmp.execute("migrate-set-parameters", {"max-bandwidth": SAVE_BANDWIDTH}, timeout=5.0)
    since = len(qmp.events)
    qmp.execute("stop", timeout=5.0)
    completed = False
    try:
        if stopped is not None:
            stopped()
        _pass_file(qmp, state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, device)
        qmp.execute("migrate", {"uri": f"fd:{_FD_NAME}"}, timeout=5.0)
        wait_migration(qmp, since, Deadline(timeout, f"the booted state to be written to {state}"), device)
        completed = True
    finally:
        if completed:
            _wait_status(qmp, "postmigrate", Deadline(10.0, "QEMU to finish the migration"), device)
        qmp.execute("cont", timeout=5.0)
    _wait_status(qmp, "running", Deadline(5.0, "the guest to run again after saving its state"), device)


def _wait_status(qmp: Qmp, status: str, deadline: Deadline, device: str) -> None:
    """Poll ``query-status`` until QEMU reports ``status`` (no event marks these run states)."""
    while True:
        now = qmp.execute("query-status", timeout=5.0).get("status")
        if now == status:
            return
        if deadline.expired:
            raise deadline.error(device, f"QEMU still reports {now!r}, not {status!r}")
        time.sleep(0.005)  # the migration thread sets the state under QEMU's lock: look again soon


class WarmStart:
    """One board's use of the cache: restore on power-on, save after a cold boot, and what to report."""

    def __init__(self, board: QemuBoard) -> None:
        self.board = board
        self.options = CacheOptions.from_extra(board.ctx.extra)
        self.off_reason = off_reason(board.config, self.options.mode)
        #: One line for the next test's report (a restore, or why a cold boot), then cleared.
        self.note: str | None = None
        #: Seconds of the last save / restore, and the entry's size.
        self.timings: dict[str, float] = {}
        self._key: tuple[str, dict[str, Any]] | None = None

    def _entry_key(self, accel: str) -> tuple[str, dict[str, Any]]:
        facts = FileFacts(self.options.cache().folder / FileFacts.NAME, write=self.options.writes)
        parts = key_parts(self.board.config, accel, self.board.ctx.reset == "snapshot", facts)
        return make_key(parts), parts

    def restore(self, accel: str) -> bool:
        """Power on from the cached state; False (board off, :attr:`note` says why) when not."""
        board = self.board
        if self.off_reason is not None or not self.options.reads:
            return False
        if board.boots:
            # Only a board's first power-on starts from the state: a later one (cycle(), off() then
            # on()) is a power cycle, which a test expects to reboot (a new boot id, fresh RAM).
            return False
        cache = self.options.cache()
        key, parts = self._key = self._entry_key(accel)
        entry, problem = cache.lookup(key, parts)
        if problem is not None:
            self.note = f"{board.device_name} cold boot because {problem}"
        if entry is None:
            return False
        started = time.monotonic()
        try:
            board._launch(accel, incoming=entry.state)
            board.sync_console(min(10.0, board.config.console_timeout), self._resume_command())
        except JumpstarterError as exc:
            board.off()
            cache.delete(key)
            reason = str(exc).splitlines()[0]
            self.note = f"{board.device_name} cold boot because restoring cache entry {key} failed: {reason}"
            return False
        self.timings = {"restore": time.monotonic() - started, "size": float(entry.size)}
        board.timings = {"launch": board.timings.get("launch", 0.0), "ready": self.timings["restore"]}
        self.note = f"{board.device_name} started from cache entry {key} in {self.timings['restore']:.2f}s"
        board.ctx.progress(self.note)
        return True

    def _resume_command(self) -> str:
        """One round trip that proves the shell answers, sets the clock the state stopped, and
        stirs host randomness into the kernel's pool (every restore starts from the same RNG
        state otherwise: two restored boards would draw the same "random" numbers).  U-Boot keeps
        no wall clock to set (its timer counts from power-on; the demo build has no ``date``), so
        its round trip is an empty command."""
        if self.board.shell_kind != "linux":
            return "true"
        return f"date -s @{int(time.time())}; printf {os.urandom(32).hex()} >/dev/urandom"

    def save(self, accel: str) -> None:
        """After a cold boot reached ready: keep its state, unless another writer does or it exists."""
        board = self.board
        if self.off_reason is not None or not self.options.writes:
            return
        cache = self.options.cache()
        key, parts = self._key if self._key is not None else self._entry_key(accel)
        with cache.writer(key) as tmp:
            qmp = board.process.qmp if board.process is not None else None
            if tmp is None or qmp is None:
                return
            started = time.monotonic()
            try:
                # Save a shell idle at its prompt with nothing unread (as reset: snapshot does); Linux
                # makes its boot id on first read: read it now, or each restore would make a new one.
                if board.shell_kind == "linux":
                    board.sync_console(board.config.console_timeout, "cat /proc/sys/kernel/random/boot_id")
                # Nothing unread: what the guest printed before it stopped is read, not waited for
                # in a quiet period (50 ms, a quarter of the U-Boot board's whole cold boot).
                send_state(
                    qmp, tmp / "state", board.config.boot_timeout, board.device_name,
                    stopped=partial(board.console.drain, quiet=0.0, limit=1.0),
                )  # fmt: skip
            except JumpstarterError as exc:
                (tmp / "state").unlink(missing_ok=True)
                self.note = f"{board.device_name}: booted state not cached: {str(exc).splitlines()[0]}"
                return
            cache.publish_meta(tmp, parts, device=f"{board.ctx.target}/{board.device_name}")
            self.timings = {"save": time.monotonic() - started, "size": float((tmp / "state").stat().st_size)}
        board.ctx.progress(
            f"{board.device_name}: booted state cached as {key} in {self.timings['save']:.2f}s"
            f" ({self.timings['size'] / 2**20:.0f} MiB)"
        )
