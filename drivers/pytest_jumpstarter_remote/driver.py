"""``driver: jumpstarter``: a board served by a Jumpstarter exporter, driven through our own fixtures.

The device is one board made of the parts of an exporter's driver tree, named by path:
``power`` (a PowerClient), ``console`` (a serial stream, e.g. PySerial), ``flasher`` (a
FlasherClient) and ``network`` (``{name: path}`` of NetworkClients).  It provides the plugin's
capabilities on top of them: Power and PowerState, HasConsole (the plugin's own Console and
LinuxShell over the console stream), Flash (always verified) and Network (port-forwards on
127.0.0.1 whose ports are read back).

Where the exporter comes from (exactly one):

- ``exporter: HOST:PORT``: a standalone exporter (``jmp run --tls-grpc-listener``); guard it with
  ``exclusive: true``, since upstream lets any number of clients drive it at once;
- ``client: FILE`` + ``selector: {...}``: a lease from a controller, see :mod:`.lease`;
- ``exporter_config: FILE``: an exporter run by this device for as long as it lives (``jmp run``
  on a free loopback port), like ``jmp shell --exporter-config``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, overload

from pytest_jumpstarter.capabilities import FlashResult
from pytest_jumpstarter.console import LINUX_FATAL_PATTERNS, Console
from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import ConsoleClosed, DeviceStateError, DriverError
from pytest_jumpstarter.settings import Setting

from .network import Forwards

SOURCES = ("exporter", "client", "exporter_config")


@dataclass(frozen=True, kw_only=True)
class Config:
    """The device's settings, read in one place."""

    exporter: str | None
    insecure: bool
    tls_ca: Path | None
    passphrase: str | None
    client: Path | None
    selector: dict[str, str]
    duration: float
    acquisition_timeout: float
    exporter_config: Path | None
    power: str | None
    console: str | None
    flasher: str | None
    flash_target: str | None
    network: dict[str, str] = field(default_factory=dict)
    ready: str | None = None
    boot_timeout: float = 120.0
    connect_timeout: float = 30.0
    autostart: bool = True

    @classmethod
    def read(cls, settings: Mapping[str, Any]) -> Config:
        return cls(**{key: settings.get(key, JumpstarterBoard.settings[key].default) for key in _FIELDS})

    def source(self) -> str:
        if self.exporter:
            return f"exporter {self.exporter}"
        if self.client:
            return f"a lease from {self.client}"
        return f"exporter config {self.exporter_config}"


_FIELDS = [
    "exporter",
    "insecure",
    "tls_ca",
    "passphrase",
    "client",
    "selector",
    "duration",
    "acquisition_timeout",
    "exporter_config",
    "power",
    "console",
    "flasher",
    "flash_target",
    "network",
    "ready",
    "boot_timeout",
    "connect_timeout",
    "autostart",
]


class JumpstarterBoard(Driver[Any]):
    """A board of a Jumpstarter lab: power, console, flash and network over gRPC."""

    name: ClassVar[str] = "jumpstarter"
    role: ClassVar[str | None] = "board"
    reset_modes: ClassVar[tuple[str, ...]] = ("reboot",)
    settings: ClassVar[Mapping[str, Setting]] = {
        "exporter": Setting(
            "str", default=None, doc="HOST:PORT of a standalone exporter (jmp run --tls-grpc-listener)"
        ),
        "insecure": Setting(
            "bool", default=False, doc="the exporter listens without TLS (jmp run --tls-grpc-insecure)"
        ),
        "tls_ca": Setting("path", default=None, doc="a CA (PEM) to verify the exporter's TLS certificate"),
        "passphrase": Setting(
            "str", default=None, doc="the exporter's passphrase (list its variable in secrets:)"
        ),
        "client": Setting(
            "path", default=None, doc="a Jumpstarter client config (ClientConfig YAML) to lease with"
        ),
        "selector": Setting(
            "mapping", default={}, doc="labels the leased exporter must have, e.g. {board: rpi4}"
        ),
        "duration": Setting("duration", default=1800.0, doc="lease duration; renewed before it ends"),
        "acquisition_timeout": Setting("duration", default=600.0, doc="how long to wait for a busy board"),
        "exporter_config": Setting("path", default=None, doc="an ExporterConfig YAML to run for the session"),
        "power": Setting(
            "str", default=None, doc="path of the power driver in the exporter's tree (qemu.power)"
        ),
        "console": Setting("str", default=None, doc="path of the console driver (qemu.console)"),
        "flasher": Setting("str", default=None, doc="path of the flasher driver (qemu.flasher)"),
        "flash_target": Setting(
            "str", default=None, doc="the flasher's target (partition) when a test names none"
        ),
        "network": Setting("mapping", default={}, doc="names for network drivers, e.g. {http: qemu.http}"),
        "ready": Setting(
            "str", default=r"[#$] ", doc="console pattern that means the board is up after power-on"
        ),
        "boot_timeout": Setting("duration", default=120.0, doc="how long power-on may take to show ready"),
        "connect_timeout": Setting(
            "duration", default=30.0, doc="how long to wait for the exporter to answer"
        ),
        "autostart": Setting(
            "bool", default=True, doc="power the board on at start (false: a test flashes first)"
        ),
    }

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        given = [key for key in SOURCES if settings.get(key)]
        if len(given) != 1:
            found = ", ".join(given) if given else "none of them"
            yield (
                "exporter",
                "expected exactly one of exporter: (a standalone exporter), client: with selector: (a lease "
                f"from a controller) or exporter_config: (an exporter run for the session), found {found}",
            )
        if settings.get("client") and not settings.get("selector"):
            yield "selector", "client: needs a selector: (labels of the exporter to lease), found none"
        if settings.get("selector") and not settings.get("client"):
            yield "selector", "selector: needs client: (the client config that leases from a controller)"
        for key in ("insecure", "tls_ca", "passphrase"):
            if settings.get(key) and not settings.get("exporter"):
                yield key, f"{key}: applies to exporter: (a standalone exporter) only"
        if settings.get("insecure") and settings.get("tls_ca"):
            yield "tls_ca", "insecure: true (no TLS) and tls_ca: (verified TLS) contradict each other"
        ready = settings.get("ready")
        if ready:
            try:
                re.compile(ready)
            except re.error as exc:
                yield "ready", f"expected a regular expression, found {ready!r} ({exc})"
        if not any(settings.get(k) for k in ("power", "console", "flasher", "network")):
            yield "power", "a jumpstarter device needs at least one of power:, console:, flasher:, network:"

    def __init__(self, ctx: DeviceContext[Any]) -> None:
        super().__init__(ctx)
        self.config = Config.read(ctx.settings)
        self._session: Any = None
        self._source: Any = None  # what provides the exporter: a lease, a local exporter, or nothing
        self._console: Console | None = None
        self._transport: Any = None
        self._forwards: Forwards | None = None
        self._powered = False
        self.lost: DriverError | None = None
        self.timings: dict[str, float] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        from .session import Session

        cfg = self.config
        began = time.monotonic()
        self._session = Session(self.device_name)
        try:
            if cfg.exporter:
                tls_ca = cfg.tls_ca.read_bytes() if cfg.tls_ca else None
                self._session.connect_tcp(
                    cfg.exporter,
                    insecure=cfg.insecure,
                    tls_ca=_b64(tls_ca) if tls_ca else None,
                    passphrase=cfg.passphrase,
                    timeout=cfg.connect_timeout,
                )
            elif cfg.client:
                from .lease import ControllerLease

                assert cfg.client is not None
                self._source = ControllerLease(
                    self, cfg.client, cfg.selector, cfg.duration, cfg.acquisition_timeout
                )
                self._source.acquire_and_connect(self._session)
            else:
                from .local import LocalExporter

                assert cfg.exporter_config is not None
                self._source = LocalExporter(self.device_name, cfg.exporter_config, self.ctx.workdir)
                address = self._source.start(cfg.connect_timeout)
                self._session.connect_tcp(
                    address, insecure=True, tls_ca=None, passphrase=None, timeout=cfg.connect_timeout
                )
            self.timings["connect"] = time.monotonic() - began
            self._check_paths()
            self._forwards = Forwards(self)
            self.started = True
            if cfg.autostart and cfg.power:
                self.on()
            elif cfg.console and not cfg.power:
                self._open_console()
        except BaseException:
            self.stop()
            raise

    def _check_paths(self) -> None:
        cfg = self.config
        assert self._session is not None
        for key, path in (("power", cfg.power), ("console", cfg.console), ("flasher", cfg.flasher)):
            if path:
                self._session.client(path, key)
        for name, path in cfg.network.items():
            self._session.client(str(path), f"network.{name}")

    def stop(self) -> None:
        self.started = False
        try:
            if self._powered and self.config.power and self.lost is None:
                with contextlib.suppress(Exception):
                    self._power_client().off()
        finally:
            self._powered = False
            self._close_console()
            forwards, self._forwards = self._forwards, None
            if forwards is not None:
                forwards.close()
            session, self._session = self._session, None
            source, self._source = self._source, None
            try:
                if source is not None:
                    source.before_disconnect()
            finally:
                try:
                    if session is not None:
                        session.close()
                finally:
                    if source is not None:
                        source.close()

    def end(self, exc: DriverError) -> None:
        """The exporter is gone for us (a lease ended): fail the current wait at once with ``exc``."""
        self.lost = exc
        transport = self._transport
        if transport is not None:
            transport.fail(exc)
        if self._forwards is not None:
            self._forwards.fail(exc)

    def require_live(self, what: str) -> None:
        if self.lost is not None:
            raise self.lost
        self.require_started(what)

    # --- power ----------------------------------------------------------------------------------

    def _power_client(self) -> Any:
        if not self.config.power:
            raise DeviceStateError(self.device_name, "no power: path is set for this board")
        return self._session.client(self.config.power, "power")

    def on(self) -> None:
        """Power on and wait for the ready pattern on the console (when both are configured)."""
        self.require_live("on()")
        began = time.monotonic()
        # Open the console first where it exists already (a UART): nothing printed at power-on is lost.
        # A console that appears with the board (QEMU's pty) keeps its early output in its own buffer.
        with contextlib.suppress(DriverError):
            if self.config.console and self._console is None:
                self._open_console()
        self._call(self._power_client().on, "power on")
        self._powered = True
        if self._transport is not None and self._transport.ended is not None and self.lost is None:
            # The console could not be reached before power-on (it appears with the board).
            self._close_console()
        if self.config.console and self._console is None:
            self._open_console()
        if self.config.console and self.config.ready:
            assert self._console is not None
            self._console.expect(self.config.ready, timeout=self.config.boot_timeout)
        self.timings["power_on_to_ready"] = time.monotonic() - began

    def off(self) -> None:
        self.require_live("off()")
        self._close_console()
        self._call(self._power_client().off, "power off")
        self._powered = False

    def cycle(self) -> None:
        self.off()
        self.on()

    @overload
    def reset(self) -> None: ...
    @overload
    def reset(self, mode: str) -> str | None: ...
    def reset(self, mode: str | None = None) -> str | None:
        """Power: a reset is a power cycle.  Also the plugin's between-tests ``reset: reboot``."""
        if mode not in (None, "reboot"):
            return f"driver {self.name!r} cannot reset with {mode!r}"
        self.cycle()
        return None

    def restore(self, mode: str) -> str | None:
        return self.reset(mode)

    @property
    def is_running(self) -> bool:
        return self._powered and self.lost is None

    # --- console --------------------------------------------------------------------------------

    @property
    def console(self) -> Console:
        self.require_live("console")
        if self._console is None:
            if not self.config.console:
                raise DeviceStateError(self.device_name, "no console: path is set for this board")
            if self.config.power and not self._powered:
                raise DeviceStateError(self.device_name, "the board is powered off: its console is off too")
            self._open_console()
        assert self._console is not None
        return self._console

    def _open_console(self) -> None:
        from .session import StreamTransport

        assert self.config.console is not None
        client = self._session.client(self.config.console, "console")
        try:
            transport = StreamTransport(self._session, client)
        except Exception as exc:
            raise DriverError(
                self.device_name, f"cannot open console {self.config.console!r}: {exc}"
            ) from exc
        self._transport = transport
        self._console = Console(
            transport,
            device=self.device_name,
            logfile_read=self.ctx.transcript,
            fatal_patterns=LINUX_FATAL_PATTERNS,
            on_eof=lambda: self._console_gone(transport),
        )

    def _console_gone(self, transport: Any) -> BaseException:
        if transport.failure is None and self._source is not None and self.lost is None:
            self._source.check_now()
        if transport.failure is not None:
            failure: BaseException = transport.failure
            return failure
        if self.lost is not None:
            return self.lost
        tail = self._console.tail() if self._console is not None else ""
        return ConsoleClosed(
            self.device_name,
            f"console {self.config.console!r}: {transport.ended}\nlast console lines:\n{tail}",
        )

    def _close_console(self) -> None:
        console, self._console = self._console, None
        self._transport = None
        if console is not None:
            console.close()

    # --- flash ----------------------------------------------------------------------------------

    def flash(self, image: Any, target: str | None = None, verify: bool = True) -> FlashResult:
        """Write ``image`` with the exporter's flasher, read it back and compare (see :mod:`.flash`)."""
        from .flash import flash

        self.require_live("flash()")
        if isinstance(image, Mapping):
            raise DriverError(self.device_name, "flash(): one image at a time on a jumpstarter flasher")
        return flash(self, image, target or self.config.flash_target, verify)

    def dump(self, target: str, path: Any, size: int) -> int:
        from .flash import dump

        self.require_live("dump()")
        return dump(self, target, Path(path), size)

    def flasher_client(self) -> Any:
        if not self.config.flasher:
            raise DeviceStateError(self.device_name, "no flasher: path is set for this board")
        return self._session.client(self.config.flasher, "flasher")

    # --- network --------------------------------------------------------------------------------

    def tcp(self, port: int | str) -> tuple[str, int]:
        self.require_live("tcp()")
        assert self._forwards is not None
        return self._forwards.tcp(port)

    def udp(self, port: int | str) -> tuple[str, int]:
        from pytest_jumpstarter.errors import TunnelError

        raise TunnelError(self.device_name, f"udp({port!r}): Jumpstarter port-forwards carry TCP only")

    def connect(self, port: int | str, timeout: float = 10.0) -> Any:
        self.require_live("connect()")
        assert self._forwards is not None
        return self._forwards.connect(port, timeout)

    def url(self, scheme: str, port: int | str, path: str = "") -> str:
        host, hport = self.tcp(port)
        if path and not path.startswith("/"):
            path = "/" + path
        return f"{scheme}://{host}:{hport}{path}"

    def forward(self, name: str) -> int:
        """The local port of the network named ``name`` (as the QEMU board's ``forward()``)."""
        return self.tcp(name)[1]

    # --- helpers --------------------------------------------------------------------------------

    def _call(self, func: Any, what: str) -> Any:
        try:
            return func()
        except DriverError:
            raise
        except Exception as exc:
            if self.lost is not None:
                raise self.lost from exc
            raise DriverError(
                self.device_name, f"{what} failed on the exporter: {type(exc).__name__}: {exc}"
            ) from exc

    @property
    def session(self) -> Any:
        self.require_live("session")
        return self._session

    @property
    def lease_name(self) -> str | None:
        return getattr(self._source, "name", None)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
