"""Network tunnels: reach ports on a board from the test host.

Drivers (role ``net_tunnel``, this family's fixture): ``qemu-user-forward`` (slirp host forwards of
a QEMU board) and ``tcp-relay`` (a relay to a board reachable by IP, or to a Unix socket).  See
:mod:`.tunnel`.  Importing this module is cheap; the drivers load with a target.  Test doubles
(a TCP/UDP echo server) are in :mod:`.testing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_jumpstarter import device_fixture
from pytest_jumpstarter.families import DriverRef, lazy_exports

if TYPE_CHECKING:
    from .impairment import Impairment, ImpairmentError
    from .qemu_forward import QemuUserForward
    from .relay import Address, Forward, Relay
    from .tunnel import NetTunnel, TcpRelay

_WHERE = {
    "Address": "relay",
    "Forward": "relay",
    "Impairment": "impairment",
    "ImpairmentError": "impairment",
    "NetTunnel": "tunnel",
    "QemuUserForward": "qemu_forward",
    "Relay": "relay",
    "TcpRelay": "tunnel",
}
__all__ = [
    "Address",
    "Forward",
    "Impairment",
    "ImpairmentError",
    "NetTunnel",
    "QemuUserForward",
    "Relay",
    "TcpRelay",
]

net_tunnel = device_fixture("net_tunnel", doc="The network tunnel device of the current target.")


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[DriverRef]:
    return [
        DriverRef("qemu-user-forward", "pytest_jumpstarter_network.qemu_forward:QemuUserForward"),
        DriverRef("tcp-relay", "pytest_jumpstarter_network.tunnel:TcpRelay"),
    ]


__getattr__ = lazy_exports(__name__, _WHERE)
