"""Small capability interfaces.  A driver is a composition of them.

Tests and other drivers ask for a capability, not a driver class: a flasher needs something that
has ``Power`` and a ``console``, whether that is a QEMU board or a relay-switched lab board.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .console import Console


@runtime_checkable
class Power(Protocol):
    """Switch a board on and off."""

    def on(self) -> None: ...
    def off(self) -> None: ...
    def reset(self) -> None: ...
    def cycle(self) -> None: ...


@runtime_checkable
class HasConsole(Protocol):
    """A board with a serial console (pexpect-compatible: see :class:`.console.Console`)."""

    @property
    def console(self) -> Console: ...


@dataclass(frozen=True)
class FlashResult:
    """What a flash did.  Only returned when the image was written and, if asked, verified."""

    method: str
    target: str
    bytes_written: int
    image_size: int
    duration: float
    checksum: str
    verified: bool

    @property
    def throughput(self) -> float:
        """Bytes per second of image delivered, verification included."""
        return self.image_size / self.duration if self.duration > 0 else float("inf")

    @property
    def mib_per_s(self) -> float:
        return self.throughput / (1024 * 1024)


@runtime_checkable
class Flash(Protocol):
    """Write an image onto a board's storage and prove it arrived."""

    def flash(
        self,
        image: str | PathLike[str] | Mapping[str, str | PathLike[str]],
        target: str | None = None,
        verify: bool = True,
    ) -> FlashResult | dict[str, FlashResult]: ...

    def dump(self, target: str, path: str | PathLike[str], size: int) -> int: ...


@runtime_checkable
class Network(Protocol):
    """Reach ports on a board from the test host."""

    def tcp(self, port: int | str) -> tuple[str, int]: ...
    def udp(self, port: int | str) -> tuple[str, int]: ...
    def connect(self, port: int | str, timeout: float = 10.0) -> socket.socket: ...
    def url(self, scheme: str, port: int | str, path: str = "") -> str: ...


@runtime_checkable
class UserNetwork(Protocol):
    """A board on user-mode (slirp-style) networking: ports reached through host forwards.

    ``boots`` counts power-ons, so a user of the board sees that forwards (and anything else held in
    the guest's RAM) were made anew.
    """

    @property
    def boots(self) -> int: ...
    def forward(self, name: str) -> int: ...
    def hostfwd_add(self, guest_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> int: ...
    def hostfwd_remove(self, host_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> None: ...


@runtime_checkable
class Addressable(Protocol):
    """A board the host reaches at an address of its own (None while it has none)."""

    @property
    def guest_address(self) -> str | None: ...
