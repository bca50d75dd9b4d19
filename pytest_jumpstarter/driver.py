"""The driver base class: what every device of a target is, whoever wrote its driver.

A driver class declares its name (what ``driver:`` says in a target file), the role it serves by
default (the fixture a test asks for, e.g. ``qemu_vm``), and its settings: a dataclass given as
the type parameter, ``class SerialConsole(Driver[SerialSettings])`` (see :mod:`.settings`).  The
plugin validates the settings, builds a :class:`DeviceContext` holding that dataclass and calls
:meth:`Driver.start` before the first test that needs the device and :meth:`Driver.stop` after the
last one (per the device's scope); between tests of a kept device it calls :meth:`Driver.restore`.
Drivers reach the world through their context, never through globals, and other devices through
:meth:`DeviceContext.ref`, typed as the capability they need.

Built-in and third-party drivers register the same way: by implementing the
``pytest_jumpstarter_add_drivers`` hook (see :mod:`pytest_jumpstarter.hookspecs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
import typing
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TextIO, TypeVar

from .capabilities import CAPABILITIES, describe_needs, implements
from .errors import DeviceStateError
from .redact import Redactor
from .settings import Setting, SettingValueError, build, coerce, declare

S = TypeVar("S")
C = TypeVar("C")


class Transcript:
    """Everything a device's console printed, teed to the running test's log file and kept for its report.

    It has the ``write``/``flush`` of a text file so it can be a pexpect ``logfile_read``.  The plugin
    calls :meth:`begin` before each test that uses the device and :meth:`end` after it; between tests
    (e.g. while a session-scoped board boots) output goes to the device's own log file.
    """

    #: How much of one test's console output is kept in memory for its report; the log file has it all.
    report_limit = 256 * 1024

    def __init__(self, redact: Callable[[str], str] = lambda s: s) -> None:
        self._redact = redact
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._path: Path | None = None
        self._buffer = io.StringIO()
        self._size = 0
        #: The raw end of the output so far that could be the start of a secret (see Redactor.split).
        self._pending = ""

    def write(self, text: str) -> int:
        with self._lock:
            # Redacted over a sliding window, not read by read: a secret split across two console
            # reads must not reach the log file whole.
            if isinstance(self._redact, Redactor):
                safe, self._pending = self._redact.split(self._pending + text)
            else:
                safe = self._redact(text)
            self._emit(safe)
        return len(text)

    def _emit(self, safe: str) -> None:
        if not safe:
            return
        try:
            if self._file is None and self._path is not None:
                # Opened at the first output, so a quiet device costs no file per test.
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self._path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            if self._file is not None:
                self._file.write(safe)
        except OSError as exc:
            self._file_failed(exc)
        self._buffer.write(safe)
        self._size += len(safe)
        if self._size > 2 * self.report_limit:
            # Keep only the tail: the end of a transcript explains a failure, the start rarely does.
            tail = self._buffer.getvalue()[-self.report_limit :]
            self._buffer = io.StringIO()
            self._buffer.write(tail)
            self._size = len(tail)

    def _drain(self) -> None:
        # A section ends: what was held back can no longer be continued there.
        self._emit(self._redact(self._pending))
        self._pending = ""

    def flush(self, drain: bool = False) -> None:
        """Flush the log file; ``drain``: also write what is held back in case a secret continues (the
        process is about to end: pytest_jumpstarter.timeouts)."""
        with self._lock:
            if drain:
                self._drain()
            if self._file is not None:
                try:
                    self._file.flush()
                except OSError as exc:
                    self._file_failed(exc)

    @property
    def path(self) -> Path | None:
        """The log file this section goes to (None: no log folder, or it failed)."""
        return self._path

    def tail(self, lines: int = 10) -> str:
        """The last ``lines`` lines of this section so far (redacted), for error messages."""
        # No lock: a signal handler may call this in the thread that holds it (pytest_jumpstarter.timeouts),
        # and reading the buffer is one call under the GIL.
        text = self._buffer.getvalue()[-16 * 1024 :] + self._redact(self._pending)
        return "\n".join(text.replace("\r\n", "\n").replace("\r", "\n").splitlines()[-lines:])

    def begin(self, log_path: Path | None) -> None:
        """Start a new section (a test); its output also goes to ``log_path`` when given."""
        with self._lock:
            self._drain()
            self._close_file()
            self._buffer = io.StringIO()
            self._size = 0
            self._path = log_path

    def end(self) -> str:
        """Close the section and return its (redacted, possibly tail-only) text."""
        with self._lock:
            self._drain()
            self._close_file()
            text = self._buffer.getvalue()
            self._buffer = io.StringIO()
            self._size = 0
        return text[-self.report_limit :]

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._file_failed(exc)
        self._file = None
        self._path = None

    def _file_failed(self, exc: OSError) -> None:
        # A log folder that fills up (or goes away) mid-test must not fail the console read that
        # wrote to it: the rest of the section is kept for the report only, and the report says so.
        self._buffer.write(f"\n[jumpstarter: console log {self._path} stopped: {exc.strerror or exc}]\n")
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None
        self._path = None


@dataclass
class DeviceContext(Generic[S]):
    """What a driver instance gets from the plugin: its identity, its settings and its surroundings."""

    #: The device's name in the target description.
    name: str
    #: The target's name (``qemu-x86_64``), used in messages and file names.
    target: str
    #: Validated, typed settings (paths resolved, defaults filled in): the driver's settings dataclass.
    settings: S
    #: The file the device was described in, for messages.
    source: str = "<memory>"
    #: Devices this one refers to, keyed by the setting that names them (``{"board": <QemuBoard>}``).
    #: Use :meth:`ref`, which hands a device over typed as the capability asked for.
    refs: Mapping[str, Driver[Any]] = field(default_factory=dict)
    #: A private folder that exists while the device lives and is removed after it.
    workdir: Path = field(default_factory=lambda: Path("."))
    #: Where this device's console output goes (per test, see :class:`Transcript`).
    transcript: Transcript = field(default_factory=Transcript)
    #: Removes secret values from text before it is shown or stored.
    redact: Callable[[str], str] = lambda s: s
    #: Shows a progress line to the user (the terminal reporter, rate limited by the plugin).
    progress: Callable[[str], None] = lambda s: None
    #: A long piece of work shown as one line whose elapsed time ticks (``with ctx.activity("flashing"):``);
    #: the ``progress`` lines said meanwhile go into it.
    activity: Callable[[str], AbstractContextManager[None]] = lambda what: contextlib.nullcontext()
    #: Free-form values the plugin or other plugins attach (e.g. the xdist worker id).
    extra: dict[str, Any] = field(default_factory=dict)
    #: How the plugin will make this device pristine between tests (the target file's ``reset:``,
    #: ``none``, ``reboot`` or ``snapshot``): a driver that must prepare for it at start() (save a
    #: snapshot once booted, say) reads it here.  The plugin calls :meth:`Driver.restore` with it.
    reset: str = "none"

    def ref(self, key: str, capability: type[C]) -> C:
        """The device that setting ``key`` names, as ``capability`` (a Protocol of :mod:`.capabilities`,
        or one that combines several).

        The loader already checked that the device provides what the setting declares it needs;
        this check is for capabilities asked for beyond that.
        """
        device = self.refs.get(key)
        if device is None:
            raise DeviceStateError(
                self.name, f"setting {key!r} names no device (set {key}: to a device name)"
            )
        if not device_provides(device, capability):
            raise DeviceStateError(
                self.name,
                f"{key}: device {device.device_name!r} (driver {device.name}) does not provide "
                f"{describe_needs(_parts(capability))}",
            )
        return typing.cast(C, device)

    def provided(self, key: str, capability: type[C]) -> C | None:
        """The device that setting ``key`` names as ``capability`` if it provides it, else ``None``
        (no device, or one without it): for what a driver uses when it is there."""
        device = self.refs.get(key)
        if device is None or not device_provides(device, capability):
            return None
        return typing.cast(C, device)

    def has_ref(self, key: str) -> bool:
        return self.refs.get(key) is not None


def _parts(capability: type) -> list[type]:
    """The capabilities a Protocol combines (itself, if it is one of :data:`.CAPABILITIES`)."""
    if capability in CAPABILITIES:
        return [capability]
    return [c for c in capability.__mro__[1:] if c in CAPABILITIES] or [capability]


def device_provides(device: Driver[Any], capability: type) -> bool:
    """Whether ``device`` provides ``capability``, as its driver's :meth:`Driver.provides` says.

    Not ``isinstance``: with a Protocol that evaluates every property, and a powered-off board's
    ``console`` raises; and a device whose parts depend on its settings narrows what it provides.
    """
    provided = type(device).provides(device.ctx.settings)
    return all(part in provided for part in _parts(capability) if part in CAPABILITIES) and (
        capability in CAPABILITIES or implements(type(device), capability)
    )


@dataclass(frozen=True)
class Referred:
    """A device a ``ref`` setting names, as :meth:`Driver.check_refs` sees it at load time."""

    name: str
    driver: str
    provides: tuple[type, ...]

    def describe(self) -> str:
        return f"device {self.name!r} (driver {self.driver})"


class Driver(Generic[S]):
    """Base of every device driver.

    Subclasses set ``name`` and ``role`` and give their settings dataclass as the type parameter.
    """

    #: What ``driver:`` says in a target file to pick this class.
    name: ClassVar[str] = ""
    #: The role (fixture name) this device serves unless the target file says ``role:``.
    role: ClassVar[str | None] = None
    #: The settings dataclass (from the type parameter) and each of its fields as a :class:`Setting`.
    settings_class: ClassVar[type | None] = None
    settings: ClassVar[Mapping[str, Setting]] = {}
    #: ``reset:`` modes this driver can do itself in :meth:`restore` (``reset: snapshot`` needs
    #: "snapshot" here).
    restore_modes: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Driver or (
                isinstance(typing.get_origin(base), type) and issubclass(typing.get_origin(base), Driver)
            ):
                (param,) = typing.get_args(base)
                if isinstance(param, type) and dataclasses.is_dataclass(param):
                    cls.settings_class = param
                    cls.settings = declare(param)

    def __init__(self, ctx: DeviceContext[S]) -> None:
        self.ctx = ctx
        self.started = False

    @classmethod
    def settings_from(cls, values: Mapping[str, Any], base_dir: Path | None = None) -> S:
        """Settings built from raw values exactly as the target loader builds them (for code that
        makes a driver without a target file: tests, benchmarks).  Raises ``SettingValueError``."""
        typed: dict[str, Any] = {}
        for key, value in values.items():
            declared = cls.settings.get(key)
            if declared is None:
                raise SettingValueError(f"unknown setting {key!r} for driver {cls.name!r}", (key,))
            try:
                typed[key] = coerce(declared, value, base_dir or Path.cwd())
            except SettingValueError as exc:
                raise exc.within(key) from None
        missing = [key for key, declared in cls.settings.items() if declared.required and key not in typed]
        if missing:
            raise SettingValueError(f"missing required settings of driver {cls.name!r}: {', '.join(missing)}")
        settings: S = build(cls.settings, cls.settings_class, typed)
        problems = [f"{key}: {message}" for key, message in cls.check(settings)]
        if problems:
            raise SettingValueError("; ".join(problems))
        return settings

    @classmethod
    def check(cls, settings: S) -> Iterable[tuple[str, str]]:
        """Cross-setting validation after each value passed its own check.

        Yield ``(key, message)`` for each problem (``"forwards.ssh"`` for a nested key); the
        loader adds the file and line.
        """
        return ()

    @classmethod
    def check_refs(cls, settings: S, refs: Mapping[str, Referred]) -> Iterable[tuple[str, str]]:
        """Validation that depends on the devices the ``ref`` settings name (``refs``, by setting,
        for those that loaded): for a capability used when the device has it and otherwise taken
        from the driver's own settings.  What a ref always needs is ``setting(needs=...)``.

        Yield ``(key, message)`` as :meth:`check` does.
        """
        return ()

    @classmethod
    def provides(cls, settings: S) -> tuple[type, ...]:
        """The capabilities (:mod:`.capabilities` Protocols) a device of this driver has, so configured.

        By default every capability the class implements; a driver whose parts depend on its
        settings (a composite board without a console, say) narrows it.
        """
        return tuple(c for c in CAPABILITIES if implements(cls, c))

    @property
    def device_name(self) -> str:
        return self.ctx.name

    def start(self) -> None:
        """Bring the device up.  Raise a :class:`~pytest_jumpstarter.errors.DriverError` if it cannot."""
        self.started = True

    def stop(self) -> None:
        """Take the device down and free everything it holds.  Must be idempotent and bounded in time."""
        self.started = False

    def restore(self, mode: str) -> str | None:
        """Return a kept device to a pristine state between tests (``mode`` is its ``reset:``), if it can.

        Returns ``None`` when it did, or a reason why it could not: the plugin then falls back to
        ``stop()`` + ``start()`` and says so in the report.  Not to be confused with a power
        reset (:class:`.capabilities.Reset`), which a driver may also have.
        """
        return f"driver {self.name!r} cannot restore with reset: {mode}"

    def health(self) -> str | None:
        """Why this kept device cannot go to the next test as it is (its process died, it panicked),
        or ``None``.  Asked before a kept device is handed out; cheap (no round trip to the device)."""
        return None

    def require_started(self, what: str) -> None:
        if not self.started:
            raise DeviceStateError(
                self.device_name, f"{what} needs a started device; it is stopped (call start() first)"
            )

    def __repr__(self) -> str:
        state = "started" if self.started else "stopped"
        return f"<{type(self).__name__} {self.ctx.target}/{self.device_name} {state}>"
