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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pytest_jumpstarter.capabilities import (
    Flash,
    FlashResult,
    HasConsole,
    Network,
    Power,
    PowerState,
    Reset,
)
from pytest_jumpstarter.console import LINUX_FATAL_PATTERNS, Console
from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import ConsoleClosed, DeviceStateError, DriverError
from pytest_jumpstarter.settings import setting
from pytest_jumpstarter.waiting import Deadline

from .network import Forwards

SOURCES = ("exporter", "client", "exporter_config")
#: How long a standalone exporter whose console stream ended is watched for going away (seconds).
GONE_WINDOW = 1.0


@dataclass(frozen=True, kw_only=True)
class JumpstarterSettings:
    """Where the exporter comes from (exactly one source), and which of its drivers make the board."""

    # -- a standalone exporter ...
    exporter: str | None = setting(
        None, doc="HOST:PORT of a standalone exporter (jmp run --tls-grpc-listener)"
    )
    insecure: bool = setting(False, doc="the exporter listens without TLS (jmp run --tls-grpc-insecure)")
    tls_ca: Path | None = setting(None, doc="a CA (PEM) to verify the exporter's TLS certificate")
    passphrase: str | None = setting(None, doc="the exporter's passphrase (list its variable in secrets:)")
    # -- ... or a lease from a controller ...
    client: Path | None = setting(None, doc="a Jumpstarter client config (ClientConfig YAML) to lease with")
    selector: dict[str, str] = setting({}, doc="labels the leased exporter must have, e.g. {board: rpi4}")
    duration: float = setting(1800.0, kind="duration", doc="lease duration; renewed before it ends")
    acquisition_timeout: float = setting(600.0, kind="duration", doc="how long to wait for a busy board")
    # -- ... or an exporter run for the session
    exporter_config: Path | None = setting(None, doc="an ExporterConfig YAML to run for the session")
    # -- paths in the exporter's driver tree
    power: str | None = setting(None, doc="path of the power driver in the exporter's tree (qemu.power)")
    console: str | None = setting(None, doc="path of the console driver (qemu.console)")
    flasher: str | None = setting(None, doc="path of the flasher driver (qemu.flasher)")
    flash_target: str | None = setting(None, doc="the flasher's target (partition) when a test names none")
    network: dict[str, str] = setting({}, doc="names for network drivers, e.g. {http: qemu.http}")
    ready: str | None = setting(r"[#$] ", doc="console pattern that means the board is up after power-on")
    boot_timeout: float = setting(120.0, kind="duration", doc="how long power-on may take to show ready")
    connect_timeout: float = setting(30.0, kind="duration", doc="how long to wait for the exporter to answer")
    autostart: bool = setting(True, doc="power the board on at start (false: a test flashes first)")

    def source(self) -> str:
        """Where the exporter comes from, as a listing or a message says it."""
        if self.exporter:
            return f"exporter {self.exporter}"
        if self.client:
            selector = ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))
            return f"a lease from {self.client} (selector {selector})"
        return f"exporter config {self.exporter_config} (run for the session)"


@runtime_checkable
class PortForwards(Protocol):
    """A board whose named networks are reached through port-forwards (what ``jumpstarter-network`` uses)."""

    @property
    def networks(self) -> Mapping[str, str]: ...

    def tcp(self, port: int | str) -> tuple[str, int]: ...


class JumpstarterBoard(Driver[JumpstarterSettings]):
    """A board of a Jumpstarter lab: power, console, flash and network over gRPC."""

    name: ClassVar[str] = "jumpstarter"
    role: ClassVar[str | None] = "board"
    restore_modes: ClassVar[tuple[str, ...]] = ("reboot",)

    @classmethod
    def check(cls, settings: JumpstarterSettings) -> Iterable[tuple[str, str]]:
        given = [key for key in SOURCES if getattr(settings, key)]
        if len(given) != 1:
            found = ", ".join(given) if given else "none of them"
            yield (
                "exporter",
                "expected exactly one of exporter: (a standalone exporter), client: with selector: (a lease "
                f"from a controller) or exporter_config: (an exporter run for the session), found {found}",
            )
        if settings.client and not settings.selector:
            yield "selector", "client: needs a selector: (labels of the exporter to lease), found none"
        if settings.selector and not settings.client:
            yield "selector", "selector: needs client: (the client config that leases from a controller)"
        for key, value in (
            ("insecure", settings.insecure),
            ("tls_ca", settings.tls_ca),
            ("passphrase", settings.passphrase),
        ):
            if value and not settings.exporter:
                yield key, f"{key}: applies to exporter: (a standalone exporter) only"
        if settings.insecure and settings.tls_ca:
            yield "tls_ca", "insecure: true (no TLS) and tls_ca: (verified TLS) contradict each other"
        if settings.ready:
            try:
                re.compile(settings.ready)
            except re.error as exc:
                yield "ready", f"expected a regular expression, found {settings.ready!r} ({exc})"
        if not (settings.power or settings.console or settings.flasher or settings.network):
            yield "power", "a jumpstarter device needs at least one of power:, console:, flasher:, network:"

    @classmethod
    def provides(cls, settings: JumpstarterSettings) -> tuple[type, ...]:
        has: dict[type, bool] = {
            Power: settings.power is not None,
            PowerState: settings.power is not None,
            Reset: settings.power is not None,
            HasConsole: settings.console is not None,
            Flash: settings.flasher is not None,
            Network: bool(settings.network),
        }
        mine = tuple(c for c in super().provides(settings) if has.get(c, True))
        return (*mine, PortForwards) if settings.network else mine

    def __init__(self, ctx: DeviceContext[JumpstarterSettings]) -> None:
        super().__init__(ctx)
        self._session: Any = None
        self._source: Any = None  # what provides the exporter: a lease, a local exporter, or nothing
        self._console: Console | None = None
        self._transport: Any = None
        self._forwards: Forwards | None = None
        self._powered = False
        self.lost: DriverError | None = None
        self.timings: dict[str, float] = {}
        #: Where the board is served from, for the test reports (kept after stop: a teardown report).
        self._report: dict[str, str] = {}

    @property
    def config(self) -> JumpstarterSettings:
        return self.ctx.settings

    @property
    def networks(self) -> Mapping[str, str]:
        """The board's named networks: ``{name: path in the exporter's tree}``."""
        return self.ctx.settings.network

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        from .session import Session

        cfg = self.config
        began = time.monotonic()
        self._session = Session(self.device_name)
        try:
            if cfg.exporter:
                tls_ca = cfg.tls_ca.read_bytes() if cfg.tls_ca else None
                self._report = {"exporter": cfg.exporter}
                self._session.connect_tcp(
                    cfg.exporter,
                    insecure=cfg.insecure,
                    tls_ca=_b64(tls_ca) if tls_ca else None,
                    passphrase=cfg.passphrase,
                    timeout=cfg.connect_timeout,
                )
            elif cfg.client:
                from .lease import ControllerLease

                self._source = ControllerLease(
                    self, cfg.client, cfg.selector, cfg.duration, cfg.acquisition_timeout
                )
                self._source.acquire_and_connect(self._session)
                self._report = self._source.report()
            else:
                from .local import LocalExporter

                assert cfg.exporter_config is not None
                self._source = LocalExporter(self.device_name, cfg.exporter_config, self.ctx.workdir)
                address = self._source.start(cfg.connect_timeout)
                self._report = {"exporter": f"{address} (jmp run --exporter-config {cfg.exporter_config})"}
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
                if self._transport is not None:
                    self._transport.flush()  # what a test typed last reaches the board before the cut
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
        if self.config.console and self._console is None and not self._console_comes_with_power():
            with contextlib.suppress(DriverError):
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

    def _console_comes_with_power(self) -> bool:
        """The console of a jumpstarter-driver-qemu VM: its pty appears with the VM.  Opened before
        power-on, its path still names the last VM's pty, which by then may be another VM's."""
        parent = (self.config.console or "").rpartition(".")[0]
        client = self._session.paths.get(parent) if parent else None
        kind = str(client.labels.get("jumpstarter.dev/client", "")) if client is not None else ""
        return kind.startswith("jumpstarter_driver_qemu.")

    def off(self) -> None:
        self.require_live("off()")
        self._close_console()
        self._call(self._power_client().off, "power off")
        self._powered = False

    def cycle(self) -> None:
        self.off()
        self.on()

    def reset(self) -> None:
        """A board reset: the exporter's power driver has no reset line, so a power cycle."""
        self.cycle()

    def restore(self, mode: str) -> str | None:
        """Between tests, ``reset: reboot`` power-cycles the board (and waits for ready)."""
        if mode != "reboot":
            return f"driver {self.name!r} cannot restore with reset: {mode} (it can: reboot)"
        if not self.config.power:
            return f"driver {self.name!r} cannot reboot a board without power: (no power driver named)"
        self.cycle()
        return None

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
        if transport.failure is None and self.lost is None:
            if self._source is not None:
                self._source.check_now()
            elif self.config.exporter:
                self._check_exporter(self.config.exporter, str(transport.ended))
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

    def _check_exporter(self, address: str, ended: str) -> None:
        """A standalone exporter's stream ended: if the exporter no longer answers, that is the news."""
        from .session import ExporterUnreachable, probe_tcp

        # An exporter that is going away (SIGTERM, a crash of one of its processes) breaks the stream
        # a moment before its listener closes: watch it for a moment before calling the stream's end news.
        deadline = Deadline(GONE_WINDOW, f"the exporter at {address} to go away")
        try:
            while True:
                probe_tcp(self.device_name, address, 2.0)
                if deadline.expired:
                    return
                time.sleep(0.05)  # the listener closes without telling us: probe it again
        except ExporterUnreachable as exc:
            self.end(
                ExporterUnreachable(
                    self.device_name,
                    f"the exporter at {address} went away during the test "
                    f"({str(exc).removeprefix(f'device {self.device_name!r}: ')}); "
                    f"the console stream: {ended}",
                )
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

    def report_properties(self) -> dict[str, str]:
        """Where the board was served from, in every test's report (JUnit properties): the exporter's
        address or name and, when leased, the lease, its controller and selector.  Never a secret."""
        return dict(self._report)

    @property
    def lease_name(self) -> str | None:
        return getattr(self._source, "name", None)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
