"""Network tunnels: reach ports on a board from the test host.

Drivers (role ``net_tunnel``): ``qemu-user-forward`` (slirp host forwards of a QEMU board) and
``tcp-relay`` (a relay to a board reachable by IP, or to a Unix socket).  See :mod:`.tunnel`.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_jumpstarter.driver import Driver

from .impairment import Impairment, ImpairmentError
from .qemu_forward import QemuUserForward
from .relay import Address, Forward, Relay
from .tunnel import NetTunnel, TcpRelay

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


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[type[Driver[Any]]]:
    return [QemuUserForward, TcpRelay]
