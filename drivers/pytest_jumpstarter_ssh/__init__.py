"""Linux boards over SSH, and files to and from any Linux board, verified.

Drivers: ``ssh`` (role ``ssh``: :class:`SshShell`, the system OpenSSH client over one master
connection) and ``files`` (role ``files``: :class:`Files`, ``put``/``get`` over SSH, HTTP or the
console, checked with ``sha256sum`` on the board).  Registered through the
``pytest_jumpstarter.drivers`` entry point; both fixtures are defined here.  Importing this module
is cheap: the drivers load with a target (or on first use of a name below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_jumpstarter import device_fixture
from pytest_jumpstarter.families import lazy_exports

if TYPE_CHECKING:
    from pytest_jumpstarter.driver import Driver

    from .channels import SshSession
    from .driver import SshSettings, SshShell
    from .files import Files, FilesSettings, Transfer

__all__ = ["Files", "FilesSettings", "SshSession", "SshSettings", "SshShell", "Transfer"]

_WHERE = {
    "SshShell": "driver",
    "SshSettings": "driver",
    "Files": "files",
    "FilesSettings": "files",
    "Transfer": "files",
    "SshSession": "channels",
}

# Not bound to the names ``ssh`` and ``files``: importing the submodule .files sets that attribute
# (and would replace the fixture).
ssh_fixture = device_fixture("ssh", doc="The SSH shell (driver ssh) of the current target's board.")
files_fixture = device_fixture("files", doc="Verified put/get (driver files) for the current target's board.")


__getattr__ = lazy_exports(__name__, _WHERE)


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[type[Driver[Any]]]:
    from .driver import SshShell
    from .files import Files

    return [SshShell, Files]
