"""Shared pieces of the network tests: ports the namespace servers use, and a board that is just an IP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_jumpstarter_network import TcpRelay

from pytest_jumpstarter import DeviceContext, Driver

#: Ports the servers use inside the namespace (it is private, so fixed ports cannot collide).
ECHO_PORT, COUNT_PORT, HTTP_PORT, UDP_PORT = 7, 9, 80, 7
HTTP_BODY = b"hello from inside the namespace\n"


@dataclass
class Namespace:
    name: str
    host_ip: str  # the root namespace's end of the veth pair
    ns_ip: str  # the address inside the namespace

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


class NamespaceHost(Driver[Any]):
    """A 'board' that is a host in a network namespace: reachable by IP, nothing else."""

    name = "netns-host"
    #: Addressable: set per instance.
    guest_address: str | None

    def __init__(self, ctx: DeviceContext[Any], address: str) -> None:
        super().__init__(ctx)
        self.guest_address = address


TunnelFactory = Callable[..., TcpRelay]
