"""Network tunnels: reach ports on a board from the test host.

Drivers (role ``net_tunnel``, this family's fixture): ``qemu-user-forward`` (slirp host forwards of
a QEMU board) and ``tcp-relay`` (a relay to a board reachable by IP, or to a Unix socket).  See
:mod:`.tunnel`.  Importing this module is cheap; the drivers load with a target.  Test doubles
(a TCP/UDP echo server) are in :mod:`.testing`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pytest

from pytest_jumpstarter import device_fixture
from pytest_jumpstarter.families import DriverRef

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


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{where}", __name__), name)
