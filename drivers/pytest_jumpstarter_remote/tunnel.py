"""``driver: jumpstarter-network``: the ``net_tunnel`` role for a Jumpstarter board.

The same interface as the other tunnels (:class:`pytest_jumpstarter_network.NetTunnel`):
``tcp()``, ``connect()``, ``url()`` and ``impaired()``.  Its ``forwards: {http: 80}`` name the
board's ports; a port reaches the board through the board's port-forward of the network driver
of the same name (``network: {http: qemu.http}`` on the ``jumpstarter`` device), directly, or
through the relay while ``impaired()`` is in effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pytest_jumpstarter_network.relay import Address
from pytest_jumpstarter_network.tunnel import NetTunnel, Target, TunnelSettings

from pytest_jumpstarter.errors import TunnelError
from pytest_jumpstarter.settings import setting

from .driver import PortForwards


@dataclass(frozen=True, kw_only=True)
class JumpstarterNetworkSettings(TunnelSettings):
    board: str = setting(
        kind="ref", needs=(PortForwards,), doc="the jumpstarter device whose network: drivers carry the ports"
    )


class JumpstarterNetwork(NetTunnel[JumpstarterNetworkSettings]):
    name: ClassVar[str] = "jumpstarter-network"

    def _board(self) -> PortForwards:
        return self.ctx.ref("board", PortForwards)

    def _network_name(self, target: Target) -> str:
        network = self._board().networks
        if str(target) in network:
            return str(target)
        for name, port in self._forwards.items():
            if port == target and name in network:
                return name
        known = ", ".join(f"{n} -> {p}" for n, p in network.items()) or "none"
        raise TunnelError(
            self.device_name,
            f"{self._label(target)} is not forwarded: name it in forwards: with a network of the same "
            f"name on the board (its network: {known})",
        )

    def _direct(self, proto: str, target: Target) -> tuple[str, int] | None:
        if proto != "tcp":
            raise TunnelError(
                self.device_name, f"{proto} to {self._label(target)}: Jumpstarter forwards TCP only"
            )
        return self._board().tcp(self._network_name(target))

    def _upstream(self, proto: str, target: Target) -> Address:
        host, port = self._direct(proto, target) or ("127.0.0.1", 0)
        return Address.inet(host, port)

    def _board_label(self) -> str:
        board: Any = self.ctx.refs.get("board")
        return f"board {board.device_name!r}" if board is not None else "the board"
