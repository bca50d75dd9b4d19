"""Device lifecycle: start devices lazily in dependency order, keep them per scope, reset, tear down.

One :class:`DeviceManager` per pytest run (per xdist worker), kept in ``config.stash``.  A device
is started the first time a test asks for it (its referred devices first), handed to later tests
per its scope (after a reset, or a cold boot when the driver cannot reset), and stopped in the
reverse order of starting: after its last test, when the run switches target, and, as a last
resort, when the run ends, whether it ended normally, by a failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .capabilities import BootStages
from .driver import DeviceContext, Driver, Transcript
from .errors import JumpstarterError
from .locking import DeviceLease, Holder
from .target import DeviceSpec, Redactor, TargetDescription
from .workfiles import owned_tempdir

if TYPE_CHECKING:
    import pluggy

    from .progress import TerminalProgress

log = logging.getLogger("pytest_jumpstarter")


@dataclass(eq=False)
class LiveDevice:
    """A started (or starting) device and what the manager knows about it."""

    target: TargetDescription
    spec: DeviceSpec
    driver: Driver[Any]
    workdir: Path
    seq: int
    uses: int = 0
    last_item: pytest.Item | None = None
    #: The cross-process lease of an ``exclusive`` device, held from before start() to after stop().
    lease: DeviceLease | None = None
    lease_lost_told: bool = False
    #: The last test that used it failed or errored (``reset: on-failure`` restores it then).
    last_failed: bool = False

    @property
    def transcript(self) -> Transcript:
        return self.driver.ctx.transcript


@dataclass(eq=False)
class ItemDevices:
    """The devices one test used, in the order it got them."""

    log_dir: Path | None
    devices: list[LiveDevice] = field(default_factory=list)


ITEM_DEVICES = pytest.StashKey[ItemDevices]()
#: A device that failed to start or reset for a test, and what was being done: the report shows
#: the driver's message instead of the plugin's frames.
DEVICE_FAILURE = pytest.StashKey[tuple[BaseException, str]]()


class DeviceManager:
    """Owns every live device of one run."""

    def __init__(
        self,
        targets: Sequence[TargetDescription],
        hook: pluggy.HookRelay,
        redact: Redactor,
        logdir: Callable[[], Path],
        extra: Mapping[str, Any] | None = None,
        lock_dir: Path | None = None,
        lock_timeout: float | None = None,
        notify: Callable[[str], None] | None = None,
        progress: TerminalProgress | None = None,
    ) -> None:
        self.targets = {t.name: t for t in targets}
        self.hook = hook
        self.redact = redact
        self._logdir_factory = logdir
        self._logdir: Path | None = None
        self._extra = dict(extra or {})
        self.live: dict[tuple[str, str], LiveDevice] = {}
        #: Devices that died and could not come back: why, and in which test (later tests skip).
        self.broken: dict[tuple[str, str], str] = {}
        self.active: str | None = None
        self._seq = 0
        self._root: Path | None = None
        #: Where exclusive devices' leases live (None: DeviceLease's default), and how long to wait
        #: for one (None: each device's lock_timeout).
        self.lock_dir = lock_dir
        self.lock_timeout = lock_timeout
        #: Shows a line to the user at once (the terminal reporter), e.g. who holds a device we wait for.
        self.notify = notify or (lambda text: log.warning("%s", text))
        #: Boot and flash progress on the terminal (pytest_jumpstarter.progress); None: log records only.
        self.terminal = progress

    # --- scopes --------------------------------------------------------------------------------

    def activate(self, target: str | None) -> None:
        """The run moves on to tests of ``target``: devices of any other target are stopped."""
        if target is None or target == self.active:
            return
        self.active = target
        others = [d for d in self.live.values() if d.target.name != target]
        self._stop_many(others, item=None)

    def has_module_devices(self) -> bool:
        return any(d.spec.scope == "module" for d in self.live.values())

    def end_module(self) -> None:
        """A test module ended: stop the module-scoped devices."""
        self._stop_many([d for d in self.live.values() if d.spec.scope == "module"], item=None)

    def finish_test(self, item: pytest.Item) -> None:
        """A test ended (passed, failed or interrupted): stop its test-scoped devices."""
        used = item.stash.get(ITEM_DEVICES, None)
        if used is None:
            return
        for device in used.devices:
            lease = device.lease
            if lease is not None and lease.lost and not device.lease_lost_told:
                # The lease ran out unrenewed (this process stopped or starved) and another run took it.
                device.lease_lost_told = True
                note = (
                    f"lost the lease on exclusive device {lease.key!r} during {item.nodeid}: another run"
                    " took it after it ran out unrenewed; results on it may mix with that run's"
                )
                self.notify(note)
                item.add_report_section("teardown", "jumpstarter", note)
        self._stop_many([d for d in used.devices if d.spec.scope == "test" and self._is_live(d)], item)

    def drop_kept(self, item: pytest.Item, why: str) -> None:
        """Stop the kept devices ``item`` used that no ``reset:`` would make pristine (``reset: none``),
        and those referring to them: the next test gets fresh ones.  (pytest_jumpstarter.timeouts)"""
        used = item.stash.get(ITEM_DEVICES, None)
        dirty = [d for d in used.devices if d.spec.reset == "none" and self._is_live(d)] if used else []
        if not dirty:
            return
        note = f"{', '.join(d.spec.name for d in dirty)} stopped because {why}: the next test boots afresh"
        item.add_report_section("teardown", "jumpstarter", note)
        self._stop_many([d for x in dirty for d in (x, *self._dependents(x))], item)

    def stop_all(self) -> list[BaseException]:
        """Stop everything still running, newest first; return the errors instead of raising."""
        errors: list[BaseException] = []
        for device in sorted(self.live.values(), key=lambda d: -d.seq):
            try:
                self._stop(device, device.last_item)
            except Exception as exc:
                errors.append(exc)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        return errors

    # --- getting devices -----------------------------------------------------------------------

    def acquire(self, item: pytest.Item, target: TargetDescription, name: str) -> Driver[Any]:
        """The started device ``name`` of ``target`` for ``item``: started (refs first) or reset as needed."""
        __tracebackhide__ = True
        used = item.stash.get(ITEM_DEVICES, None)
        if used is None:
            used = ItemDevices(self._item_log_dir(item))
            item.stash[ITEM_DEVICES] = used
        for current in target.start_order(name):
            device = self.live.get((target.name, current))
            if device is not None and device in used.devices:
                continue
            if (target.name, current) in self.broken:
                pytest.skip(self.broken[(target.name, current)])
            try:
                if device is None:
                    device = self._start(target, target.devices[current], item, used)
                elif (dead := device.driver.health()) is not None:
                    self._begin(device, used)
                    device = self._restart_dead(device, item, dead)
                elif device.uses > 0 and self._wants_restore(device):
                    self._begin(device, used)
                    self._reset_or_drop(device, item)
                else:
                    self._begin(device, used)
            except JumpstarterError as exc:
                what = "starting" if device is None else "resetting"
                item.stash[DEVICE_FAILURE] = (
                    exc,
                    f"while {what} device {current!r} of target {target.name!r}",
                )
                raise
            device.uses += 1
            device.last_item = item
        driver = self.live[(target.name, name)].driver
        marker = item.get_closest_marker("boot_stage")
        if marker is not None and marker.args and isinstance(driver, BootStages):
            driver.boot_to(str(marker.args[0]))
        return driver

    def record_outcome(self, item: pytest.Item, failed: bool) -> None:
        """A test phase ended: ``reset: on-failure`` restores the devices of a failed test."""
        used = item.stash.get(ITEM_DEVICES, None)
        for device in used.devices if used is not None else ():
            device.last_failed = device.last_failed or failed

    @staticmethod
    def _wants_restore(device: LiveDevice) -> bool:
        reset = device.spec.reset
        return reset not in ("none", "on-failure") or (reset == "on-failure" and device.last_failed)

    def _restart_dead(self, device: LiveDevice, item: pytest.Item, dead: str) -> LiveDevice:
        """A kept device died (in the last test that used it): start it afresh, or give it up."""
        __tracebackhide__ = True
        last = device.last_item.nodeid if device.last_item is not None else "its start"
        note = f"{device.spec.name} was found dead ({self.redact(dead)}) after {last}: restarting it"
        self.notify(note)
        item.add_report_section("setup", "jumpstarter", note)
        try:
            self._stop_many([device, *self._dependents(device)], item)
        except Exception as exc:
            log.warning("stopping dead device %s failed: %s", device.spec.name, exc)
        used = item.stash[ITEM_DEVICES]
        used.devices.remove(device)
        try:
            return self._start(device.target, device.spec, item, used)
        except JumpstarterError as exc:
            reason = (
                f"device {device.spec.name!r} of target {device.target.name!r} is down: it died after {last}"
                f" ({self.redact(dead)}) and did not restart ({self.redact(str(exc).splitlines()[0])})"
            )
            self.broken[(device.target.name, device.spec.name)] = reason
            pytest.skip(reason)

    def _reset_or_drop(self, device: LiveDevice, item: pytest.Item) -> None:
        __tracebackhide__ = True
        try:
            self._reset(device, item)
        except BaseException:
            # A device that failed to reset is in no known state: the next test gets a fresh one.
            try:
                self._stop_many([device, *self._dependents(device)], item)
            except Exception as exc:
                log.warning("stopping %s after its failed reset failed too: %s", device.spec.name, exc)
            raise

    def _begin(self, device: LiveDevice, used: ItemDevices) -> None:
        used.devices.append(device)
        log_path = used.log_dir / f"{_safe(device.spec.name)}.log" if used.log_dir is not None else None
        device.transcript.begin(log_path)

    def _start(
        self, target: TargetDescription, spec: DeviceSpec, item: pytest.Item | None, used: ItemDevices | None
    ) -> LiveDevice:
        __tracebackhide__ = True
        # An exclusive device is taken before anything of it starts, and given back in _stop().
        lease = self._take_lease(target, spec, item) if spec.exclusive else None
        try:
            root = self._workroot()
            workdir = Path(tempfile.mkdtemp(prefix=f"{_safe(target.name)}-{_safe(spec.name)}-", dir=root))
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        ctx = DeviceContext(
            name=spec.name,
            target=target.name,
            settings=spec.settings,
            source=str(target.source),
            refs={key: self.live[(target.name, ref)].driver for key, ref in spec.refs.items()},
            workdir=workdir,
            transcript=Transcript(self.redact),
            redact=self.redact,
            progress=self._progress(spec.name),
            activity=lambda what: self._activity(spec.name, what),
            # "notify" shows a line on the terminal now (e.g. who holds a remote board we wait for).
            extra={**self._extra, "notify": self.notify},
            # A test-scoped device boots fresh for each test: nothing to prepare a reset for.
            reset=spec.reset if spec.scope != "test" else "none",
        )
        try:
            driver = spec.driver(ctx)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            if lease is not None:
                lease.release()
            raise
        self._seq += 1
        device = LiveDevice(target, spec, driver, workdir, self._seq, lease=lease)
        # Registered before start() so that an interrupted or failed start is still stopped.
        self.live[(target.name, spec.name)] = device
        if used is not None:
            self._begin(device, used)
        try:
            with self._activity(spec.name, "starting"):
                driver.start()
        except BaseException:
            self._stop(device, item, notify=False)
            raise
        self.hook.pytest_jumpstarter_device_ready(device=driver, item=item)
        return device

    def _take_lease(
        self, target: TargetDescription, spec: DeviceSpec, item: pytest.Item | None
    ) -> DeviceLease:
        """Wait for and take the lease of an exclusive device (LockTimeout after its lock timeout)."""
        __tracebackhide__ = True
        key = spec.lock or f"{target.name}/{spec.name}"
        owner = f"pytest pid {os.getpid()}" + (f" ({item.nodeid})" if item is not None else "")
        worker = self._extra.get("worker")
        if worker:
            owner += f" [xdist {worker}]"
        timeout = self.lock_timeout if self.lock_timeout is not None else spec.lock_timeout
        lease = DeviceLease(key, lock_dir=self.lock_dir, owner=owner)

        def waiting(holder: Holder) -> None:
            self.notify(
                f"waiting for exclusive device {key!r}, held by {holder.describe()}"
                f" (giving up after {timeout:g}s)"
            )

        with self._activity(spec.name, f"waiting for exclusive device {key!r}", quiet=True):
            lease.acquire(timeout, waiting)
        return lease

    def _activity(self, name: str, what: str, quiet: bool = False) -> AbstractContextManager[None]:
        """A terminal line while ``name`` does ``what``, its elapsed time ticking (quiet: after 1 s)."""
        return self.terminal.activity(name, what, quiet) if self.terminal else contextlib.nullcontext()

    def _progress(self, name: str) -> Callable[[str], None]:
        def progress(text: str) -> None:
            log.info("%s: %s", name, self.redact(text))
            if self.terminal is not None:
                self.terminal(name, self.redact(text))

        return progress

    def _reset(self, device: LiveDevice, item: pytest.Item) -> None:
        __tracebackhide__ = True
        driver = device.driver
        mode = device.spec.reset
        if mode == "on-failure":
            mode = driver.restore_modes[0] if driver.restore_modes else "reboot"
        device.last_failed = False
        with self._activity(device.spec.name, f"restoring ({mode})", quiet=True):
            reason = driver.restore(mode)
        if reason is not None:
            # The driver cannot make the device pristine in place: a cold boot can, at its price.
            note = f"{device.spec.name} cold boot because {self.redact(reason)}"
            log.info("%s", note)
            item.add_report_section("setup", "jumpstarter", note)
            self.hook.pytest_jumpstarter_device_teardown(device=driver, item=item)
            driver.stop()
            with self._activity(device.spec.name, "cold boot"):
                driver.start()
        self.hook.pytest_jumpstarter_device_ready(device=driver, item=item)

    # --- stopping ------------------------------------------------------------------------------

    def _dependents(self, device: LiveDevice) -> list[LiveDevice]:
        """Live devices of the same target that refer to ``device``, directly or not."""
        found: list[LiveDevice] = []
        names = {device.spec.name}
        for other in sorted(self.live.values(), key=lambda d: d.seq):
            if other.target is device.target and names & set(other.spec.refs.values()):
                names.add(other.spec.name)
                found.append(other)
        return found

    def _is_live(self, device: LiveDevice) -> bool:
        return self.live.get((device.target.name, device.spec.name)) is device

    def _stop_many(self, devices: Sequence[LiveDevice], item: pytest.Item | None) -> None:
        """Stop ``devices`` newest first, every one even if some fail; then raise the first error."""
        __tracebackhide__ = True
        first: BaseException | None = None
        for device in sorted(devices, key=lambda d: -d.seq):
            try:
                self._stop(device, item or device.last_item)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def _stop(self, device: LiveDevice, item: pytest.Item | None, notify: bool = True) -> None:
        __tracebackhide__ = True
        if not self._is_live(device):
            return
        try:
            if notify:
                self.hook.pytest_jumpstarter_device_teardown(device=device.driver, item=item)
        finally:
            try:
                try:
                    device.driver.stop()
                except KeyboardInterrupt:
                    # Ctrl-C or SIGTERM in the middle of a stop: finish stopping (stop() is idempotent),
                    # then let the interrupt through; a device must not outlive the run.
                    device.driver.stop()
                    raise
            finally:
                del self.live[(device.target.name, device.spec.name)]
                shutil.rmtree(device.workdir, ignore_errors=True)
                if device.lease is not None:
                    device.lease.release()

    # --- files ---------------------------------------------------------------------------------

    def _workroot(self) -> Path:
        if self._root is None:
            # With an owner record: if this process is killed, a later run sweeps the folder.
            self._root = owned_tempdir("pytest-jumpstarter-")
        return self._root

    def logdir(self) -> Path:
        """Per-test console logs: ``<logdir>/<test id>/<device>.log``, a rerun's in ``<test id>-attempt2``."""
        if self._logdir is None:
            self._logdir = self._logdir_factory()
        return self._logdir

    def _item_log_dir(self, item: pytest.Item) -> Path | None:
        # pytest-rerunfailures counts the attempts on the item: each rerun gets a folder of its own.
        attempt = getattr(item, "execution_count", 1)
        again = f"-attempt{attempt}" if isinstance(attempt, int) and attempt > 1 else ""
        return self.logdir() / f"{_safe(item.nodeid)}{again}"

    def transcripts(self, item: pytest.Item, final: bool) -> Iterator[tuple[str, str]]:
        """End each device's transcript section for ``item``: yields ``(device, text)``.

        Unless ``final``, a new section continues in the same log file (the next test phase).
        """
        used = item.stash.get(ITEM_DEVICES, None)
        if used is None:
            return
        for device in used.devices:
            text = device.transcript.end()
            if not final and self._is_live(device):
                log_path = used.log_dir / f"{_safe(device.spec.name)}.log" if used.log_dir else None
                device.transcript.begin(log_path)
            elif self._is_live(device):
                # Between tests a kept device's output goes to its own log file (one per xdist worker).
                worker = self._extra.get("worker")
                prefix = f"{_safe(worker)}-" if worker else ""
                device.transcript.begin(
                    self.logdir()
                    / "devices"
                    / f"{prefix}{_safe(device.target.name)}-{_safe(device.spec.name)}.log"
                )
            if text:
                yield device.spec.name, text


_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def _safe(text: str) -> str:
    """A file name from a node id or device name: no separators, no brackets, bounded length."""
    cleaned = _UNSAFE.sub("_", text).strip("_.") or "_"
    return cleaned[-150:]
