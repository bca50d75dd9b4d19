"""``qemu-user-forward``: host endpoints for a QEMU board's ports through slirp's own host forwards.

Each port becomes a slirp host forward on a port the kernel picks (asked for as port 0, read back
over QMP by the board's ``hostfwd_add``), so parallel workers never collide.  Forwards are removed
on stop.  The shared tunnel machinery (names, the relay, impairment) is :class:`.tunnel.NetTunnel`.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from pytest_jumpstarter.capabilities import PowerState, QmpHost, UserNetwork
from pytest_jumpstarter.driver import DeviceContext
from pytest_jumpstarter.errors import JumpstarterError, TunnelError
from pytest_jumpstarter.settings import setting
from pytest_jumpstarter.waiting import Deadline

from .relay import Address
from .tunnel import NetTunnel, Target, TunnelSettings, log


@runtime_checkable
class UserNetBoard(UserNetwork, PowerState, QmpHost, Protocol):
    """What qemu-user-forward needs of its board: slirp forwards, whether it runs, and QMP
    (``info usernet`` tells a refused connection from one still being made)."""


@dataclass(frozen=True, kw_only=True)
class QemuUserForwardSettings(TunnelSettings):
    board: str = setting(
        kind="ref",
        needs=(UserNetwork, PowerState, QmpHost),
        doc="the QEMU board (driver qemu) on user networking",
    )
    host: str = setting("127.0.0.1", doc="host address slirp binds its forwards to")
    relay: bool = setting(False, doc="always put the relay in front (impairment then applies to all)")


class QemuUserForward(NetTunnel[QemuUserForwardSettings]):
    """``qemu-user-forward``: slirp host forwards of a QEMU board on user networking.

    Endpoints are slirp's own host ports (no extra hop).  Inside ``impaired()``, or with
    ``relay: true``, endpoints go through the relay in front of those ports so the impairment
    applies; connections made before ``impaired()`` keep their direct, unimpaired path.

    When the board is powered off and on, its new QEMU process has a new slirp: the forwards are
    made again on first use (new host ports), and relayed endpoints keep their port and lead to the
    new forwards, so with ``relay: true`` an endpoint stays valid across power cycles.
    """

    name: ClassVar[str] = "qemu-user-forward"

    def __init__(self, ctx: DeviceContext[QemuUserForwardSettings]) -> None:
        super().__init__(ctx)
        self._hostfwds: dict[tuple[str, int], int] = {}
        self._boots: int | None = None

    def _refresh(self, remake: bool = True) -> None:
        # QemuBoard counts its launches; slirp forwards die with the QEMU process that had them.
        boots = self._board().boots
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

    def _board(self) -> UserNetBoard:
        return self.ctx.ref("board", UserNetBoard)

    def _board_label(self) -> str:
        return f"board {self.ctx.settings.board!r}"

    def _hostfwd(self, proto: str, port: int) -> int:
        key = (proto, port)
        if key not in self._hostfwds:
            host = self.ctx.settings.host
            try:
                self._hostfwds[key] = self._board().hostfwd_add(port, proto=proto, host=host)
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
        deadline = Deadline(timeout, f"{self._label(target)} to answer")
        relayed = ("tcp", target) in self._relayed and (
            self._impairment is not None or self.ctx.settings.relay
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
                if deadline.expired:
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
        if self.ctx.settings.relay:
            return None
        assert isinstance(target, int)
        return self.ctx.settings.host, self._hostfwd(proto, target)

    def _upstream(self, proto: str, target: Target) -> Address:
        assert isinstance(target, int)
        return Address.inet(self.ctx.settings.host, self._hostfwd(proto, target))

    def _close_direct(self, proto: str, target: Target) -> None:
        if isinstance(target, int):
            self._remove_hostfwd("udp" if proto == "udp" else "tcp", target)

    def _remove_hostfwd(self, proto: str, port: int) -> None:
        host_port = self._hostfwds.pop((proto, port), None)
        if host_port is None:
            return
        board = self._board()
        if not board.is_running:
            return  # the VM (and slirp with it) is gone: nothing left to remove
        try:
            board.hostfwd_remove(host_port, proto=proto, host=self.ctx.settings.host)
        except JumpstarterError as exc:
            log.warning(
                "%s: removing slirp forward %s:%s failed: %s", self.device_name, proto, host_port, exc
            )

    def stop(self) -> None:
        try:
            if self.started and self._board().is_running:
                self._refresh(remake=False)  # forwards of an earlier QEMU process are gone already
            for proto, port in list(self._hostfwds):
                self._remove_hostfwd(proto, port)
        finally:
            super().stop()
