"""Leases from a Jumpstarter controller, done the way a test run needs them.

- Taken when the device starts, released (DeleteLease) when it stops: also on SIGINT, SIGTERM
  (the plugin turns it into Ctrl-C) and SIGHUP (turned into the same here, while a lease is held).
- Renewed (UpdateLease) before it runs out, for as long as the device lives.
- Watched: when the controller ends it, the board's current wait fails at once with
  "lease L on exporter E ended at T (reason)", instead of a stream that goes silent.
- While waiting, the terminal says who holds the board (the controller's Pending message); after
  ``acquisition_timeout`` the error names the selector and what the lab offered; a selector that
  nothing matches fails at once.

The connection itself is the stock client's: ``Lease.serve_unix_async`` dials the exporter through
the controller's router and serves it on a local Unix socket.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pytest_jumpstarter.errors import DriverError

from .session import ExporterUnreachable, Session, probe_tcp

if TYPE_CHECKING:
    from .driver import JumpstarterBoard

#: How often the lease is checked while waiting for it and while it is held.
POLL = 0.5
#: How long a controller that accepts connections may leave GetLease unanswered before it counts as gone.
SILENCE = 10.0


class LeaseLost(DriverError):
    """The controller ended our lease (expired, revoked, released by someone else)."""


class ControllerLost(DriverError):
    """The controller (and its router, which carries every stream) stopped answering."""


class LeaseUnavailable(DriverError):
    """No lease could be had: nothing matches the selector, or the board stayed busy too long."""


def _conditions(lease: Any) -> dict[str, Any]:
    return {c.type: c for c in lease.conditions}


class ControllerLease:
    def __init__(
        self, board: JumpstarterBoard, client: Path, selector: dict[str, str], duration: float, timeout: float
    ) -> None:
        self.board = board
        self.client_path = client
        self.selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        self.duration = duration
        self.timeout = timeout
        self.name: str | None = None
        self.exporter: str | None = None
        self.endpoint: str | None = None
        self._svc: Any = None
        self._session: Session | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._previous_sighup: Any = None
        self.renewals = 0

    @property
    def device(self) -> str:
        return self.board.device_name

    def _call(self, method: str, timeout: float = 15.0, **kwargs: Any) -> Any:
        assert self._session is not None
        func = getattr(self._svc, method)

        async def call() -> Any:
            return await func(**kwargs)

        try:
            return self._session.call(call, timeout=timeout, what=f"{method} at the controller")
        except DriverError:
            raise
        except Exception as exc:
            raise ExporterUnreachable(
                self.device, f"{method} at the controller failed: {type(exc).__name__}: {exc}"
            ) from exc

    def acquire_and_connect(self, session: Session) -> None:
        from jumpstarter.client.grpc import ClientService
        from jumpstarter.config.client import ClientConfigV1Alpha1

        self._session = session
        try:
            config = ClientConfigV1Alpha1.from_file(self.client_path)
        except Exception as exc:
            raise DriverError(
                self.device, f"client: {self.client_path}: {type(exc).__name__}: {exc}"
            ) from exc
        if not config.endpoint:
            raise DriverError(self.device, f"client: {self.client_path} has no endpoint")
        probe_tcp(self.device, config.endpoint, 5.0, what="controller")
        self.endpoint = config.endpoint
        channel = session.open_channel(
            config.channel, timeout=10.0, what=f"connecting to the controller {config.endpoint}"
        )
        self._svc = ClientService(channel=channel, namespace=config.metadata.namespace)
        self._install_sighup()
        created = self._call("CreateLease", selector=self.selector, duration=timedelta(seconds=self.duration))
        self.name = created.name
        self._wait(config.endpoint)
        self._connect(session, channel, config)
        self._watcher = threading.Thread(target=self._watch, name=f"lease-{self.name}", daemon=True)
        self._watcher.start()

    def report(self) -> dict[str, str]:
        """The lease for the test reports: its name, the exporter, the controller and the selector."""
        found = {"lease": self.name, "exporter": self.exporter, "controller": self.endpoint}
        return {k: v for k, v in {**found, "selector": self.selector}.items() if v}

    def _wait(self, endpoint: str) -> None:
        deadline = time.monotonic() + self.timeout
        told = ""
        while True:
            lease = self._call("GetLease", name=self.name)
            conds = _conditions(lease)
            ready = conds.get("Ready")
            if ready is not None and ready.status == "True":
                self.exporter = lease.exporter
                return
            unsat = conds.get("Unsatisfiable")
            if unsat is not None and unsat.status == "True":
                self._delete()
                raise LeaseUnavailable(
                    self.device,
                    f"no exporter at {endpoint} matches selector {self.selector!r}: {unsat.message}",
                )
            if ready is not None and ready.status == "False":
                raise LeaseUnavailable(
                    self.device, f"lease {self.name} ended before it was granted: {ready.message}"
                )
            pending = conds.get("Pending")
            message = pending.message if pending is not None else ""
            if message and message != told:
                told = message
                self._notify(f"waiting for lease {self.name} (selector {self.selector}): {message}")
            if time.monotonic() >= deadline:
                offered = self._offered()
                self._delete()
                raise LeaseUnavailable(
                    self.device,
                    f"no lease for selector {self.selector!r} within {self.timeout:g}s "
                    f"({message or 'the controller gave no reason'}); the lab offers: {offered}",
                )
            time.sleep(POLL)  # the controller has no push for lease state; GetLease is the wait

    def _offered(self) -> str:
        try:
            exporters = self._call("ListExporters").exporters
        except DriverError as exc:
            return f"(could not list exporters: {exc})"
        return (
            "; ".join(f"{e.name} {dict(e.labels)}{'' if e.online else ' (offline)'}" for e in exporters)
            or "no exporters"
        )

    def _notify(self, text: str) -> None:
        notify = self.board.ctx.extra.get("notify")
        if callable(notify):
            notify(f"{self.device}: {text}")
        else:
            self.board.ctx.progress(text)

    def _connect(self, session: Session, channel: Any, config: Any) -> None:
        from jumpstarter.client import Lease

        lease = Lease(
            channel=channel,
            duration=timedelta(seconds=self.duration),
            selector=self.selector,
            portal=session.portal,
            namespace=config.metadata.namespace,
            name=self.name,
            allow=[],
            unsafe=True,
            release=False,
            tls_config=config.tls,
            grpc_options=config.grpcOptions or {},
            client_name=config.metadata.name,
        )
        path = session.enter_async(lease.serve_unix_async())
        session.connect_unix(str(path), self.board.config.connect_timeout, f"exporter {self.exporter}")

    def _watch(self) -> None:
        """Renew before the end, and tell the board at once when the controller ends the lease."""
        renew_every = max(1.0, min(self.duration / 3, 60.0))
        next_renewal = time.monotonic() + renew_every
        silent_since: float | None = None
        while not self._stop.wait(POLL):
            try:
                lease = self._call("GetLease", timeout=10.0, name=self.name)
            except DriverError as exc:
                if self._stop.is_set():
                    return
                # The router that carries our streams is the controller's: when nothing listens at
                # its address any more, or it stays silent, every stream is dead though none ends.
                silent_since = silent_since or time.monotonic()
                gone = self._controller_gone(exc, time.monotonic() - silent_since)
                if gone is not None:
                    self.board.end(gone)
                    return
                continue  # a blip at the controller; the lease's own end time still bounds us
            silent_since = None
            lost = self._lost(lease)
            if lost is not None:
                self.board.end(lost)
                return
            if time.monotonic() >= next_renewal and lease.effective_begin_time is not None:
                held = datetime.now().astimezone() - lease.effective_begin_time
                with contextlib.suppress(DriverError):
                    self._call(
                        "UpdateLease", name=self.name, duration=held + timedelta(seconds=self.duration)
                    )
                    self.renewals += 1
                next_renewal = time.monotonic() + renew_every

    def _lost(self, lease: Any) -> LeaseLost | None:
        ready = _conditions(lease).get("Ready")
        if lease.effective_end_time is None and (ready is None or ready.status == "True"):
            return None
        when = lease.effective_end_time or datetime.now().astimezone()
        why = f" ({ready.reason}: {ready.message})" if ready is not None and ready.message else ""
        return LeaseLost(
            self.device, f"lease {self.name} on exporter {self.exporter} ended at {when:%H:%M:%S}{why}"
        )

    def _controller_gone(self, exc: DriverError, silent: float) -> ControllerLost | None:
        try:
            assert self.endpoint is not None
            probe_tcp(self.device, self.endpoint, 2.0, what="controller")
        except ExporterUnreachable as refused:
            exc = refused
        else:
            if silent < SILENCE:
                return None
        return ControllerLost(
            self.device,
            f"the controller at {self.endpoint} went away during lease {self.name} on exporter "
            f"{self.exporter}: {exc}",
        )

    def check_now(self) -> DriverError | None:
        """Whether the lease has ended (asked when a stream ends: the router may cut it first)."""
        deadline = time.monotonic() + 3 * POLL
        while time.monotonic() < deadline:
            try:
                lost = self._lost(self._call("GetLease", timeout=5.0, name=self.name))
            except DriverError as exc:
                # The stream ended and the controller does not answer either: it is the controller
                # (and its router) that went away, not the board.
                gone = ControllerLost(
                    self.device,
                    f"the controller at {self.endpoint} went away during lease {self.name} on exporter "
                    f"{self.exporter}: {exc}",
                )
                self.board.end(gone)
                return gone
            if lost is not None:
                self.board.end(lost)
                return lost
            time.sleep(POLL / 5)  # the controller may record the end just after cutting the stream
        return None

    def _install_sighup(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def hangup(signum: int, frame: FrameType | None) -> None:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            raise KeyboardInterrupt("SIGHUP")

        self._previous_sighup = signal.signal(signal.SIGHUP, hangup)

    def _delete(self) -> None:
        if self.name is not None:
            with contextlib.suppress(DriverError):
                self._call("DeleteLease", timeout=10.0, name=self.name)

    def before_disconnect(self) -> None:
        """Stop watching and give the lease back while the session's loop still runs."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self._svc is not None and self.board.lost is None:
            self._delete()

    def close(self) -> None:
        self._stop.set()
        if self._previous_sighup is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
