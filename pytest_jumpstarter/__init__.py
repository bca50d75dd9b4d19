"""pytest-jumpstarter: hardware-in-the-loop testing with pytest.

The public surface is re-exported here; everything else is private to the plugin.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use: pytest imports this package for its plugin on every run, and most runs
# (no target configured) need none of it.  Type checkers see the real imports.
if TYPE_CHECKING:
    from .capabilities import (
        Addressable,
        DiskHost,
        Flash,
        FlashResult,
        HasConsole,
        Network,
        Power,
        PowerState,
        QmpHost,
        Reconnect,
        Reset,
        TftpHost,
        UserNetwork,
    )
    from .console import Console, LinuxShell, RunResult, SerialTransport, SocketTransport
    from .driver import DeviceContext, Driver, Referred, Transcript
    from .errors import (
        BoardPanic,
        BoardReset,
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
    from .plugin import device_fixture
    from .settings import Setting, SettingValueError, setting
    from .target import DeviceSpec, Redactor, TargetDescription, load_target, load_targets
    from .target_fixture import Target
    from .uboot import UBootShell

_WHERE = {
    "Addressable": "capabilities",
    "DiskHost": "capabilities",
    "Flash": "capabilities",
    "PowerState": "capabilities",
    "QmpHost": "capabilities",
    "Reconnect": "capabilities",
    "Reset": "capabilities",
    "TftpHost": "capabilities",
    "UserNetwork": "capabilities",
    "SettingValueError": "settings",
    "setting": "settings",
    "BoardPanic": "errors",
    "BoardReset": "errors",
    "Console": "console",
    "ConsoleClosed": "errors",
    "ConsoleTimeout": "errors",
    "DeviceContext": "driver",
    "DeviceExited": "errors",
    "DeviceSpec": "target",
    "DeviceStateError": "errors",
    "Driver": "driver",
    "DriverError": "errors",
    "DriverRef": "families",
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
    "Referred": "driver",
    "RunResult": "console",
    "SerialTransport": "console",
    "Setting": "settings",
    "SshError": "errors",
    "SocketTransport": "console",
    "Target": "target_fixture",
    "TargetDescription": "target",
    "TargetError": "errors",
    "TransferError": "errors",
    "Transcript": "driver",
    "TunnelError": "errors",
    "UBootShell": "uboot",
    "device_fixture": "plugin",
    "load_target": "target",
    "load_targets": "target",
}


__all__ = [
    "Addressable",
    "BoardPanic",
    "BoardReset",
    "Console",
    "ConsoleClosed",
    "ConsoleTimeout",
    "DeviceContext",
    "DeviceExited",
    "DeviceSpec",
    "DeviceStateError",
    "DiskHost",
    "Driver",
    "DriverError",
    "DriverRef",
    "Flash",
    "FlashError",
    "FlashResult",
    "HasConsole",
    "JumpstarterError",
    "LinuxShell",
    "LockTimeout",
    "Network",
    "Power",
    "PowerState",
    "Problem",
    "QmpHost",
    "Reconnect",
    "Redactor",
    "Referred",
    "Reset",
    "RunResult",
    "SerialTransport",
    "Setting",
    "SettingValueError",
    "SocketTransport",
    "SshError",
    "Target",
    "TargetDescription",
    "TargetError",
    "TftpHost",
    "Transcript",
    "TransferError",
    "TunnelError",
    "UBootShell",
    "UserNetwork",
    "device_fixture",
    "load_target",
    "load_targets",
    "setting",
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
