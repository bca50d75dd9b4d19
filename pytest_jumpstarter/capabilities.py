"""Small capability interfaces.  A driver is a composition of them.

Devices meet through these Protocols, never through a driver class: a flasher needs something
that has ``Power`` and a ``console``, whether that is a QEMU board, a relay-switched lab board or a
board leased from a remote lab.  A ``ref`` setting says which capabilities the device it names must
have (``setting(kind="ref", needs=(Power, HasConsole))``); the target loader checks that against
:meth:`pytest_jumpstarter.Driver.provides` before any test runs, and at run time
:meth:`pytest_jumpstarter.DeviceContext.ref` hands the device over typed as what was asked for.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .console import Console


@runtime_checkable
class Power(Protocol):
    """Switch a board on and off (as labgrid's PowerProtocol and Jumpstarter's power driver do)."""

    def on(self) -> None: ...
    def off(self) -> None: ...
    def cycle(self) -> None: ...


@runtime_checkable
class PowerState(Protocol):
    """Tell whether a board is powered (and, for a process-backed board, still alive)."""

    @property
    def is_running(self) -> bool: ...


@runtime_checkable
class Reset(Protocol):
    """Reset a running board without cutting its power (a reset line, QMP ``system_reset``)."""

    def reset(self) -> None: ...


@runtime_checkable
class HasConsole(Protocol):
    """A board with a serial console (pexpect-compatible: see :class:`.console.Console`)."""

    @property
    def console(self) -> Console: ...


@runtime_checkable
class Reconnect(Protocol):
    """A link that can be dropped and opened again: a console that goes away with its board's power.

    A USB serial adapter on the board, or a console served by the board itself (a QEMU TCP chardev),
    vanishes when the power goes off.  The board that owns such a console calls :meth:`disconnect`
    before it cuts the power and :meth:`reconnect` (which waits for the far end, bounded) after it
    switched the power back on.
    """

    def disconnect(self) -> None: ...
    def reconnect(self) -> None: ...


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
class DiskHost(Protocol):
    """A board whose storage is files on the test host (a virtual machine's disks).

    ``disk_path`` is the per-run file the board really uses (base images are never written);
    ``set_disk`` swaps it, only while the board is off; ``new_disk_file`` names a file in the
    board's own folder, which lives as long as the board does.
    """

    def disk_path(self, name: str) -> Path: ...
    def disk_format(self, name: str) -> str: ...
    def set_disk(self, name: str, path: str | PathLike[str], fmt: str = "raw") -> None: ...
    def new_disk_file(self, name: str) -> Path: ...


@runtime_checkable
class UserNetwork(Protocol):
    """A board on user-mode (NAT) networking whose guest ports are forwarded to host ports.

    ``boots`` counts power-ons: forwards belong to one power-on and are gone after the next.
    """

    @property
    def boots(self) -> int: ...

    def forward(self, name: str) -> int: ...
    def hostfwd_add(self, guest_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> int: ...
    def hostfwd_remove(self, host_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> None: ...


@runtime_checkable
class TftpHost(Protocol):
    """A board that fetches files by TFTP from a folder on the test host (``None``: it has none)."""

    @property
    def tftp_root(self) -> Path | None: ...


@runtime_checkable
class Addressable(Protocol):
    """A board reachable by IP address from the test host (``None``: not known)."""

    @property
    def guest_address(self) -> str | None: ...


@runtime_checkable
class QmpHost(Protocol):
    """A virtual machine's management interface (QEMU's QMP)."""

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any: ...
    def hmp(self, command: str, timeout: float = 10.0) -> str: ...
    def wait_event(self, name: str, timeout: float = 10.0, since: int = 0) -> Any: ...


@runtime_checkable
class BootStages(Protocol):
    """A board that can be brought to a named boot stage (``uboot``, ``linux``)."""

    def boot_to(self, stage: str) -> None: ...


#: Every capability the loader knows by name, for messages and :meth:`Driver.provides`.
CAPABILITIES: tuple[type, ...] = (
    Power,
    PowerState,
    Reset,
    HasConsole,
    Reconnect,
    Flash,
    Network,
    DiskHost,
    UserNetwork,
    TftpHost,
    Addressable,
    QmpHost,
    BootStages,
)


def members(capability: type) -> tuple[str, ...]:
    """The methods and properties a capability consists of, in declaration order."""
    names: list[str] = []
    for klass in reversed(capability.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        for name in klass.__dict__:
            if not name.startswith("_") and name not in names:
                names.append(name)
    return tuple(names)


def implements(cls: type, capability: type) -> bool:
    """Whether class ``cls`` has every member of ``capability``, checked on the class, not an instance.

    An attribute set in ``__init__`` counts when the class annotates it (``boots: int``).
    """
    annotated = {name for klass in cls.__mro__ for name in getattr(klass, "__annotations__", {})}
    return all(hasattr(cls, name) or name in annotated for name in members(capability))


def describe_needs(needs: Iterable[type]) -> str:
    """``Power (on, off, cycle) and HasConsole (console)``: capabilities as a message shows them."""
    return " and ".join(f"{c.__name__} ({', '.join(members(c))})" for c in needs)
