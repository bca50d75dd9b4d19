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
from .lifecycle import Target
from .plugin import device_fixture
from .settings import Setting
from .target import DeviceSpec, Redactor, TargetDescription, load_target, load_targets

__all__ = [
    "BoardPanic",
    "Console",
    "ConsoleClosed",
    "ConsoleTimeout",
    "DeviceContext",
    "DeviceExited",
    "DeviceSpec",
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
    "Redactor",
    "RunResult",
    "SerialTransport",
    "Setting",
    "SocketTransport",
    "Target",
    "TargetDescription",
    "TargetError",
    "Transcript",
    "TunnelError",
    "UBootShell",
    "device_fixture",
    "load_target",
    "load_targets",
]
