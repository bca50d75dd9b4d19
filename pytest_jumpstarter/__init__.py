"""pytest-jumpstarter: hardware-in-the-loop testing with pytest.

The public surface is re-exported here; everything else is private to the plugin.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use: pytest imports this package for its plugin on every run, and most runs
# (no target configured) need none of it.  Type checkers see the real imports.
if TYPE_CHECKING:
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
        SshError,
        TargetError,
        TransferError,
        TunnelError,
    )
    from .lifecycle import Target
    from .plugin import device_fixture
    from .settings import Setting
    from .target import DeviceSpec, Redactor, TargetDescription, load_target, load_targets

_WHERE = {
    "BoardPanic": "errors",
    "Console": "console",
    "ConsoleClosed": "errors",
    "ConsoleTimeout": "errors",
    "DeviceContext": "driver",
    "DeviceExited": "errors",
    "DeviceSpec": "target",
    "DeviceStateError": "errors",
    "Driver": "driver",
    "DriverError": "errors",
    "FlashError": "errors",
    "FlashResult": "capabilities",
    "HasConsole": "capabilities",
    "JumpstarterError": "errors",
    "LinuxShell": "console",
    "LockTimeout": "errors",
    "Network": "capabilities",
    "Power": "capabilities",
    "Problem": "errors",
    "Redactor": "target",
    "RunResult": "console",
    "SerialTransport": "console",
    "Setting": "settings",
    "SshError": "errors",
    "SocketTransport": "console",
    "Target": "lifecycle",
    "TargetDescription": "target",
    "TargetError": "errors",
    "TransferError": "errors",
    "Transcript": "driver",
    "TunnelError": "errors",
    "UBootShell": "console",
    "device_fixture": "plugin",
    "load_target": "target",
    "load_targets": "target",
}


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
    "SshError",
    "Target",
    "TargetDescription",
    "TargetError",
    "Transcript",
    "TransferError",
    "TunnelError",
    "UBootShell",
    "device_fixture",
    "load_target",
    "load_targets",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_jumpstarter' has no attribute {name!r}")
    # Not cached here: the submodule in sys.modules stays the one source of truth, so classes agree
    # (isinstance/issubclass) even where sys.modules is snapshot and restored, as pytester does.
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
