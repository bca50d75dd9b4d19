"""The ``net_tunnel`` drivers: host-side endpoints for ports on a board.

Two drivers share one interface (:class:`NetTunnel`, the ``Network`` capability):

- ``qemu-user-forward`` (:mod:`.qemu_forward`): a QEMU board on user (slirp) networking.  Each
  port becomes a slirp host forward on a port the kernel picks, so parallel workers never collide.
- ``tcp-relay`` (here): a board reachable by IP (a lab board, a QEMU board on a TAP, a host in a network
  namespace), or a Unix socket on this host.  A relay in this process listens on ``listen``
  (127.0.0.1 unless the description says otherwise) and forwards to ``address:port``.

Ports are numbers or names from the description (``forwards: {ssh: 22, http: 80}`` →
``tcp("http")``); a number not named there is forwarded on first use.  ``impaired(...)`` applies
delay, jitter, loss and a rate limit in the relay (see :mod:`.impairment`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from pytest_jumpstarter.capabilities import Addressable
from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import TunnelError
from pytest_jumpstarter.settings import SettingValueError, describe, setting
from pytest_jumpstarter.workfiles import socket_dir

from .impairment import Impairment
from .relay import Address, Forward, Relay

log = logging.getLogger("pytest_jumpstarter.network")

#: What a forward is relayed to: a port on the board, or a Unix socket path on this host.
Target = int | Path

_WILDCARDS = {"", "0.0.0.0", "::", "*"}


def _forward_shorthand(value: object) -> object:
    """A forward's short form: a port number (``22``) or ``unix:PATH``."""
    if isinstance(value, str) and value.startswith("unix:"):
        return {"unix": value[5:]}
    if (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.strip().isdigit()
    ):
        return {"port": value}
    raise SettingValueError(f"expected a port number 1..65535 or unix:PATH, found {describe(value)}")


@dataclass(frozen=True, kw_only=True)
class ForwardTarget:
    """Where a named forward leads: a port on the board, or (tcp-relay) a Unix socket on this host."""

    port: int | None = setting(None, doc="the port on the board, 1..65535")
    unix: Path | None = setting(None, doc="a Unix socket on this host (tcp-relay only)")

    @property
    def target(self) -> Target:
        if self.unix is not None:
            return self.unix
        assert self.port is not None  # check() makes sure one of them is set
        return self.port


@dataclass(frozen=True, kw_only=True)
class TunnelSettings:
    """What both tunnel drivers accept."""

    forwards: dict[str, ForwardTarget] = setting(
        {},
        shorthand=_forward_shorthand,
        doc="names for ports, e.g. {ssh: 22, http: 80}; tcp('http') then means port 80",
    )
    listen: str = setting(
        "127.0.0.1", doc="address the relay listens on; only loopback unless you set e.g. 0.0.0.0 on purpose"
    )
    connect_timeout: float = setting(
        5.0, kind="duration", doc="how long the relay waits for the board to accept"
    )


TS = TypeVar("TS", bound=TunnelSettings)


class NetTunnel(Driver[TS]):
    """Host-side endpoints for ports on a board (TCP, UDP, Unix sockets), with optional impairment."""

    role: ClassVar[str | None] = "net_tunnel"
    #: Whether ``forwards:`` may name a ``unix:PATH`` upstream (only where the relay reaches it).
    allows_unix_upstream: ClassVar[bool] = False

    def __init__(self, ctx: DeviceContext[TS]) -> None:
        super().__init__(ctx)
        self._relay: Relay | None = None
        self._relayed: dict[tuple[str, Target], Forward] = {}
        self._impairment: Impairment | None = None
        self._forwards: dict[str, Target] = {}
        self._short_dir: Path | None = None

    @classmethod
    def check(cls, settings: TS) -> Iterable[tuple[str, str]]:
        for name, forward in settings.forwards.items():
            if (forward.port is None) == (forward.unix is None):
                yield (
                    f"forwards.{name}",
                    "expected one of port: (a port on the board) or unix: (a socket path)",
                )
            elif forward.unix is not None and not cls.allows_unix_upstream:
                yield (
                    f"forwards.{name}",
                    f"expected a port number, found unix:{forward.unix} "
                    "(unix: targets need driver tcp-relay)",
                )
            elif forward.port is not None and not 0 < forward.port < 65536:
                yield f"forwards.{name}", f"expected a port number 1..65535, found {forward.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._forwards = {name: forward.target for name, forward in self.ctx.settings.forwards.items()}
        self._relay = Relay(f"{self.ctx.target}/{self.device_name}", self.ctx.settings.connect_timeout)
        super().start()
        try:
            for name in self._forwards:
                self.tcp(name)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        relay, self._relay = self._relay, None
        self._relayed.clear()
        self._impairment = None
        super().stop()
        if relay is not None:
            relay.close()
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None
        if relay is not None and relay.errors:
            raise TunnelError(
                self.device_name,
                "the relay hit internal errors (a bug in pytest-jumpstarter, please report it):\n  "
                + "\n  ".join(relay.errors[:10]),
            )

    # -- the Network capability ----------------------------------------------------------------

    def tcp(self, port: int | str) -> tuple[str, int]:
        """``(host, port)`` on this machine that reaches TCP ``port`` (number or name) on the board."""
        return self._inet_endpoint("tcp", port)

    def udp(self, port: int | str) -> tuple[str, int]:
        """``(host, port)`` on this machine that reaches UDP ``port`` on the board."""
        return self._inet_endpoint("udp", port)

    def unix(self, port: int | str) -> Path:
        """A Unix socket path on this machine whose connections are relayed to TCP ``port`` on the board.

        For tools that only speak to Unix sockets (a ``UnixNetwork``-style client, a docker/QMP/agent
        client).  The socket lives in the device's private folder and is removed on stop.
        """
        self.require_started("unix()")
        self._refresh()
        target = self._target(port)
        key = ("unix", target)
        fwd = self._relayed.get(key)
        if fwd is None:
            name = f"{target}" if isinstance(target, int) else target.name
            path = self._socket_dir() / f"{self.device_name}-{name}.sock"
            fwd = self._add_relay("tcp", Address.unix(path), target)
            self._relayed[key] = fwd
        return Path(fwd.listen.address)

    def connect(self, port: int | str, timeout: float = 10.0) -> socket.socket:
        """A TCP socket connected (end to end: the board accepted) to ``port`` on the board.

        Raises :class:`TunnelError` naming the board and port if nothing accepts there.
        """
        host, hport = self.tcp(port)
        target = self._target(port)
        fwd = self._relayed.get(("tcp", target))
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        reason: str | None = None
        try:
            sock.settimeout(timeout)
            # Bound first, so the relay's report about this connection can be found even if the
            # relay's reset (upstream refused) beats connect() back.
            sock.bind((host, 0))
            local = sock.getsockname()
            sock.connect((host, hport))
        except OSError as exc:
            sock.close()
            if fwd is not None:
                with contextlib.suppress(TimeoutError):
                    reason = fwd.wait_outcome(local, 1.0)
            raise TunnelError(
                self.device_name,
                f"cannot connect to {self._label(target)} through {host}:{hport}: {reason or exc}",
            ) from exc
        if fwd is not None:
            try:
                reason = fwd.wait_outcome(local, timeout)
            except TimeoutError:
                reason = f"the relay got no answer from the board within {timeout}s"
            if reason is not None:
                sock.close()
                raise TunnelError(
                    self.device_name,
                    f"cannot connect to {self._label(target)}: {reason}; "
                    f"check that a server listens on port {target} on the board",
                )
        return sock

    def url(self, scheme: str, port: int | str, path: str = "") -> str:
        """``scheme://host:port/path`` reaching ``port`` on the board (e.g. ``url("http", 80, "/")``)."""
        host, hport = self.tcp(port)
        if ":" in host:
            host = f"[{host}]"
        if path and not path.startswith("/"):
            path = "/" + path
        return f"{scheme}://{host}:{hport}{path}"

    def close(self, port: int | str, proto: str = "tcp") -> None:
        """Remove a forward opened at run time (``proto``: tcp, udp or unix); new connections are refused."""
        target = self._target(port)
        fwd = self._relayed.pop((proto, target), None)
        if fwd is not None and self._relay is not None:
            self._relay.remove(fwd)
        self._close_direct(proto, target)

    @contextlib.contextmanager
    def impaired(
        self,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        rate_kbps: float | None = None,
        *,
        seed: int | None = None,
    ) -> Iterator[Impairment]:
        """Impair relayed traffic in both directions while the block runs (see :mod:`.impairment`).

        ``latency_ms`` is one-way (a round trip grows by twice it); ``loss`` drops UDP datagrams and
        delays TCP segments by a retransmission timeout; ``rate_kbps`` caps each direction.
        """
        self.require_started("impaired()")
        assert self._relay is not None
        impairment = Impairment(latency_ms, jitter_ms, loss, rate_kbps, seed=seed)
        previous = self._impairment
        self._impairment = impairment
        self._relay.set_impairment(impairment)
        try:
            yield impairment
        finally:
            self._impairment = previous
            if self._relay is not None:
                self._relay.set_impairment(previous)

    @property
    def relay(self) -> Relay | None:
        """The relay's event loop (None while stopped); ``relay.splice`` says how bulk data moves."""
        return self._relay

    @property
    def forwards(self) -> dict[str, Target]:
        """The named forwards of the description."""
        return dict(self._forwards)

    # -- what the two drivers do differently ---------------------------------------------------

    def _upstream(self, proto: str, target: Target) -> Address:
        """Where the relay sends a connection for ``target``."""
        raise NotImplementedError

    def _direct(self, proto: str, target: Target) -> tuple[str, int] | None:
        """An endpoint that needs no relay (slirp's own forward), or None."""
        return None

    def _close_direct(self, proto: str, target: Target) -> None:
        """Remove what :meth:`_direct` or :meth:`_upstream` set up on the board side."""

    def _board_label(self) -> str:
        raise NotImplementedError

    def _refresh(self) -> None:
        """Bring board-side state up to date before an endpoint is handed out (see qemu-user-forward)."""

    # -- helpers -------------------------------------------------------------------------------

    def _label(self, target: Target) -> str:
        if isinstance(target, Path):
            return f"unix socket {target} (for {self._board_label()})"
        return f"{self._board_label()} port {target}"

    def _target(self, port: int | str) -> Target:
        if isinstance(port, str) and not port.strip().isdigit():
            if port not in self._forwards:
                known = ", ".join(sorted(self._forwards)) or "none"
                raise TunnelError(
                    self.device_name,
                    f"no forward named {port!r} for {self._board_label()}; "
                    f"the target's forwards: are: {known} (or pass a port number)",
                )
            return self._forwards[port]
        number = int(port)
        if not 0 < number < 65536:
            raise TunnelError(self.device_name, f"port {port!r} for {self._board_label()}: expected 1..65535")
        return number

    def _inet_endpoint(self, proto: str, port: int | str) -> tuple[str, int]:
        self.require_started(f"{proto}()")
        self._refresh()
        target = self._target(port)
        if proto == "udp" and isinstance(target, Path):
            raise TunnelError(self.device_name, f"udp({port!r}): {target} is a Unix stream socket, not UDP")
        if self._impairment is None and (direct := self._direct(proto, target)) is not None:
            return direct
        fwd = self._relayed.get((proto, target))
        if fwd is None:
            fwd = self._add_relay(proto, Address.inet(self._listen_host(), 0), target)
            self._relayed[(proto, target)] = fwd
        host, hport = fwd.listen.address[:2]
        if host in _WILDCARDS:
            host = "::1" if fwd.listen.family == socket.AF_INET6 else "127.0.0.1"
        return host, hport

    def _add_relay(self, proto: str, listen: Address, target: Target) -> Forward:
        assert self._relay is not None
        upstream = self._upstream(proto, target)
        try:
            return self._relay.add(proto, listen, upstream, self._label(target))
        except OSError as exc:
            raise TunnelError(
                self.device_name, f"cannot listen on {listen} for {self._label(target)}: {exc}"
            ) from exc

    def _socket_dir(self) -> Path:
        """Where unix() sockets go: the device's folder, or a short private one if that path is too long."""
        # A Unix socket path is limited to 107 bytes; pytest's folders can be deeper than that.
        if len(os.fsencode(self.ctx.workdir)) <= 60:
            return self.ctx.workdir
        if self._short_dir is None:
            self._short_dir = socket_dir("jsnet-")
        return self._short_dir

    def _listen_host(self) -> str:
        host = self.ctx.settings.listen
        return "0.0.0.0" if host == "*" else host


@dataclass(frozen=True, kw_only=True)
class TcpRelaySettings(TunnelSettings):
    board: str | None = setting(
        None,
        kind="ref",
        needs=(Addressable,),
        doc="the board device; its guest_address is used unless address: is set",
    )
    address: str | None = setting(None, doc="the board's IP address or host name")


class TcpRelay(NetTunnel[TcpRelaySettings]):
    """``tcp-relay``: relay to a board reachable by IP (``address:``, or the board's ``guest_address``)."""

    name: ClassVar[str] = "tcp-relay"
    allows_unix_upstream: ClassVar[bool] = True

    @classmethod
    def check(cls, settings: TcpRelaySettings) -> Iterable[tuple[str, str]]:
        yield from super().check(settings)
        if not settings.board and not settings.address:
            yield (
                "address",
                "tcp-relay needs address: (the board's IP) or board: (a board with a guest_address)",
            )

    def __init__(self, ctx: DeviceContext[TcpRelaySettings]) -> None:
        super().__init__(ctx)
        self.address: str | None = None

    def start(self) -> None:
        address = self.ctx.settings.address
        if not address and self.ctx.has_ref("board"):
            address = self.ctx.ref("board", Addressable).guest_address
            if not address:
                raise TunnelError(
                    self.device_name,
                    f"board {self.ctx.settings.board!r} has no guest_address (is it on user networking? "
                    "then use driver: qemu-user-forward), and no address: is set",
                )
        if not address:
            raise TunnelError(self.device_name, "no address: set and no board: to take a guest_address from")
        self.address = address
        super().start()

    def _board_label(self) -> str:
        board = self.ctx.refs.get("board")
        if board is not None:
            return f"board {board.device_name!r} ({self.address})"
        return f"board at {self.address}"

    def _upstream(self, proto: str, target: Target) -> Address:
        if isinstance(target, Path):
            return Address.unix(target)
        assert self.address is not None
        try:
            info = socket.getaddrinfo(self.address, target, type=socket.SOCK_DGRAM if proto == "udp" else 0)
        except OSError as exc:
            raise TunnelError(self.device_name, f"cannot resolve {self._label(target)}: {exc}") from exc
        family, _, _, _, sockaddr = info[0]
        return Address(family, sockaddr)
