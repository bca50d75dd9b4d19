"""The ``net_tunnel`` drivers: host-side endpoints for ports on a board.

Two drivers share one interface (:class:`NetTunnel`, the ``Network`` capability):

- ``qemu-user-forward``: a QEMU board on user (slirp) networking.  Each port becomes a slirp host
  forward on a port the kernel picks (asked for as port 0, read back over QMP by the board's
  ``hostfwd_add``), so parallel workers never collide.  Forwards are removed on stop.
- ``tcp-relay``: a board reachable by IP (a lab board, a QEMU board on a TAP, a host in a network
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
import re
import selectors
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import JumpstarterError, TunnelError
from pytest_jumpstarter.settings import Setting
from pytest_jumpstarter.workfiles import socket_dir

from .impairment import Impairment
from .relay import Address, Forward, Relay

log = logging.getLogger("pytest_jumpstarter.network")

#: What a forward is relayed to: a port on the board, or a Unix socket path on this host.
Target = int | Path

_WILDCARDS = {"", "0.0.0.0", "::", "*"}

_COMMON_SETTINGS: dict[str, Setting] = {
    "forwards": Setting(
        "mapping",
        default={},
        doc="names for ports, e.g. {ssh: 22, http: 80}; tcp('http') then means port 80",
    ),
    "listen": Setting(
        "str",
        default="127.0.0.1",
        doc="address the relay listens on; only loopback unless you set e.g. 0.0.0.0 on purpose",
    ),
    "connect_timeout": Setting(
        "duration", default=5.0, doc="how long the relay waits for the board to accept"
    ),
}


class NetTunnel(Driver[Any]):
    """Host-side endpoints for ports on a board (TCP, UDP, Unix sockets), with optional impairment."""

    role: ClassVar[str | None] = "net_tunnel"
    #: Whether ``forwards:`` may name a ``unix:PATH`` upstream (only where the relay reaches it).
    allows_unix_upstream: ClassVar[bool] = False

    def __init__(self, ctx: DeviceContext[Any]) -> None:
        super().__init__(ctx)
        self._relay: Relay | None = None
        self._relayed: dict[tuple[str, Target], Forward] = {}
        self._impairment: Impairment | None = None
        self._forwards: dict[str, Target] = {}
        self._short_dir: Path | None = None

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        for name, value in (settings.get("forwards") or {}).items():
            try:
                _parse_target(value, cls.allows_unix_upstream)
            except ValueError as exc:
                yield f"forwards.{name}", str(exc)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._forwards = {
            str(name): _parse_target(value, self.allows_unix_upstream)
            for name, value in (self.ctx.settings.get("forwards") or {}).items()
        }
        self._relay = Relay(
            f"{self.ctx.target}/{self.device_name}", self.ctx.settings.get("connect_timeout", 5.0)
        )
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
        host = str(self.ctx.settings.get("listen", "127.0.0.1"))
        return "0.0.0.0" if host == "*" else host


class TcpRelay(NetTunnel):
    """``tcp-relay``: relay to a board reachable by IP (``address:``, or the board's ``guest_address``)."""

    name: ClassVar[str] = "tcp-relay"
    allows_unix_upstream: ClassVar[bool] = True
    settings: ClassVar[Mapping[str, Setting]] = {
        "board": Setting(
            "ref", default=None, doc="the board device; its guest_address is used unless address: is set"
        ),
        "address": Setting("str", default=None, doc="the board's IP address or host name"),
        **_COMMON_SETTINGS,
    }

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        yield from super().check(settings)
        if not settings.get("board") and not settings.get("address"):
            yield (
                "address",
                "tcp-relay needs address: (the board's IP) or board: (a board with a guest_address)",
            )

    def __init__(self, ctx: DeviceContext[Any]) -> None:
        super().__init__(ctx)
        self.address: str | None = None

    def start(self) -> None:
        address = self.ctx.settings.get("address")
        board = self.ctx.refs.get("board")
        if not address and board is not None:
            address = getattr(board, "guest_address", None)
            if not address:
                raise TunnelError(
                    self.device_name,
                    f"board {board.device_name!r} has no guest_address (is it on user networking? then use "
                    "driver: qemu-user-forward), and no address: is set",
                )
        if not address:
            raise TunnelError(self.device_name, "no address: set and no board: to take a guest_address from")
        self.address = str(address)
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


class QemuUserForward(NetTunnel):
    """``qemu-user-forward``: slirp host forwards of a QEMU board on user networking.

    Endpoints are slirp's own host ports (no extra hop).  Inside ``impaired()``, or with
    ``relay: true``, endpoints go through the relay in front of those ports so the impairment
    applies; connections made before ``impaired()`` keep their direct, unimpaired path.

    When the board is powered off and on, its new QEMU process has a new slirp: the forwards are
    made again on first use (new host ports), and relayed endpoints keep their port and lead to the
    new forwards, so with ``relay: true`` an endpoint stays valid across power cycles.
    """

    name: ClassVar[str] = "qemu-user-forward"
    settings: ClassVar[Mapping[str, Setting]] = {
        "board": Setting("ref", doc="the QEMU board (driver qemu) on user networking"),
        "host": Setting("str", default="127.0.0.1", doc="host address slirp binds its forwards to"),
        "relay": Setting(
            "bool", default=False, doc="always put the relay in front (impairment then applies to all)"
        ),
        **_COMMON_SETTINGS,
    }

    def __init__(self, ctx: DeviceContext[Any]) -> None:
        super().__init__(ctx)
        self._hostfwds: dict[tuple[str, int], int] = {}
        self._boots: int | None = None

    def _refresh(self, remake: bool = True) -> None:
        # QemuBoard counts its launches; slirp forwards die with the QEMU process that had them.
        boots = getattr(self._board(), "boots", None)
        if boots == self._boots:
            return
        known, self._boots = self._boots, boots
        if known is None:
            return
        self._hostfwds.clear()
        if not remake:
            return
        for (kind, target), fwd in self._relayed.items():
            fwd.upstream = self._upstream("udp" if kind == "udp" else "tcp", target)

    def _board(self) -> Any:
        board = self.ctx.refs.get("board")
        if board is None:
            raise TunnelError(
                self.device_name, "no board: device given (qemu-user-forward needs a QEMU board)"
            )
        return board

    def _board_label(self) -> str:
        board = self.ctx.refs.get("board")
        return f"board {board.device_name!r}" if board is not None else f"board of {self.device_name!r}"

    def _hostfwd(self, proto: str, port: int) -> int:
        key = (proto, port)
        if key not in self._hostfwds:
            host = str(self.ctx.settings.get("host", "127.0.0.1"))
            try:
                self._hostfwds[key] = int(self._board().hostfwd_add(port, proto=proto, host=host))
            except JumpstarterError as exc:
                raise TunnelError(
                    self.device_name, f"cannot add a slirp {proto} forward to {self._label(port)}: {exc}"
                ) from exc
        return self._hostfwds[key]

    def connect(self, port: int | str, timeout: float = 10.0) -> socket.socket:
        """A TCP socket connected to ``port`` on the guest; TunnelError if the guest refuses or stays silent.

        slirp accepts a connection on the host before it connects to the guest, so a refusal would
        only show later as an end of stream.  So this waits until slirp has no half-open connection
        to that port left (its ``info usernet`` shows none in SYN_SENT), then looks at the socket.
        """
        sock = super().connect(port, timeout)
        try:
            self._await_guest(sock, self._target(port), timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def _await_guest(self, sock: socket.socket, target: Target, timeout: float) -> None:
        host_port = self._hostfwds.get(("tcp", target)) if isinstance(target, int) else None
        if host_port is None:
            return
        half_open = re.compile(rf"TCP\[SYN_SENT\]\s+\d+\s+\S+\s+{host_port}\s")
        deadline = time.monotonic() + timeout
        relayed = ("tcp", target) in self._relayed and (
            self._impairment is not None or self.ctx.settings.get("relay", False)
        )
        # Through the relay, slirp's close takes one more hop (and the impairment's delay) to arrive.
        linger = 0.0
        if relayed:
            imp = self._impairment
            linger = 0.02 + ((imp.latency_ms + imp.jitter_ms) / 1000 if imp is not None else 0.0)
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            # slirp may not have taken our connection from its listening socket yet when the first
            # look comes: done is "was half open, is no longer", or the socket shows something, or
            # (a guest that answered between two looks) nothing was ever half open for a while.
            seen_half_open = False
            grace = time.monotonic() + 0.05
            while True:
                if half_open.search(self._board().hmp("info usernet")):
                    seen_half_open = True
                elif seen_half_open or time.monotonic() > grace:
                    break
                if time.monotonic() > deadline:
                    raise TunnelError(
                        self.device_name,
                        f"cannot connect to {self._label(target)}: no answer within {timeout}s",
                    )
                if sel.select(0.002):  # an end of stream (or data) settles it at once
                    break
            if not sel.select(linger):
                return
        try:
            closed = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return
        except OSError:
            closed = True
        if closed:
            raise TunnelError(
                self.device_name,
                f"cannot connect to {self._label(target)}: the guest refused (slirp closed the connection); "
                f"check that a server listens on port {target} on the board",
            )

    def _direct(self, proto: str, target: Target) -> tuple[str, int] | None:
        if self.ctx.settings.get("relay", False):
            return None
        assert isinstance(target, int)
        return str(self.ctx.settings.get("host", "127.0.0.1")), self._hostfwd(proto, target)

    def _upstream(self, proto: str, target: Target) -> Address:
        assert isinstance(target, int)
        return Address.inet(str(self.ctx.settings.get("host", "127.0.0.1")), self._hostfwd(proto, target))

    def _close_direct(self, proto: str, target: Target) -> None:
        if isinstance(target, int):
            self._remove_hostfwd("udp" if proto == "udp" else "tcp", target)

    def _remove_hostfwd(self, proto: str, port: int) -> None:
        host_port = self._hostfwds.pop((proto, port), None)
        if host_port is None:
            return
        board = self._board()
        if not getattr(board, "is_running", True):
            return  # the VM (and slirp with it) is gone: nothing left to remove
        try:
            board.hostfwd_remove(host_port, proto=proto, host=str(self.ctx.settings.get("host", "127.0.0.1")))
        except JumpstarterError as exc:
            log.warning(
                "%s: removing slirp forward %s:%s failed: %s", self.device_name, proto, host_port, exc
            )

    def stop(self) -> None:
        try:
            if self.started and getattr(self._board(), "is_running", True):
                self._refresh(remake=False)  # forwards of an earlier QEMU process are gone already
            for proto, port in list(self._hostfwds):
                self._remove_hostfwd(proto, port)
        finally:
            super().stop()


def _parse_target(value: object, allow_unix: bool) -> Target:
    """A forward's target from the description: a port number, or ``unix:PATH`` where allowed."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    elif isinstance(value, str) and value.startswith("unix:") and len(value) > 5:
        if not allow_unix:
            raise ValueError(f"expected a port number, found {value!r} (unix: targets need driver tcp-relay)")
        return Path(value[5:]).expanduser()
    else:
        unix = " or unix:PATH" if allow_unix else ""
        raise ValueError(f"expected a port number 1..65535{unix}, found {value!r}")
    if not 0 < number < 65536:
        raise ValueError(f"expected a port number 1..65535, found {number}")
    return number
