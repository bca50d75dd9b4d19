"""pytest-jumpstarter: hardware-in-the-loop testing with pytest.

The public surface is re-exported here; everything else is private to the plugin.
"""

from __future__ import annotations

from .capabilities import FlashResult, HasConsole, Network, Power
from .console import Console, LinuxShell, RunResult, SerialTransport, SocketTransport, UBootShell
from .driver import DeviceContext, Driver, Transcript
from .errors import (
    BoardPanic,
    ConsoleClosed,
    ConsoleTimeout,
    DeviceExited,
    DeviceStateError,
    DriverError,
    FlashError,
    JumpstarterError,
    LockTimeout,
    Problem,
    TargetError,
    TunnelError,
)
from .settings import Setting

__all__ = [
    "BoardPanic",
    "Console",
    "ConsoleClosed",
    "ConsoleTimeout",
    "DeviceContext",
    "DeviceExited",
    "DeviceStateError",
    "Driver",
    "DriverError",
    "FlashError",
    "FlashResult",
    "HasConsole",
    "JumpstarterError",
    "LinuxShell",
    "LockTimeout",
    "Network",
    "Power",
    "Problem",
    "RunResult",
    "SerialTransport",
    "Setting",
    "SocketTransport",
    "TargetError",
    "Transcript",
    "TunnelError",
    "UBootShell",
]
