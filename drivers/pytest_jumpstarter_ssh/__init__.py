"""Linux boards over SSH, and files to and from any Linux board, verified.

Drivers: ``ssh`` (role ``ssh``: :class:`SshShell`, the system OpenSSH client over one master
connection) and ``files`` (role ``files``: :class:`Files`, ``put``/``get`` over SSH, HTTP or the
console, checked with ``sha256sum`` on the board).  Registered through the
``pytest_jumpstarter.drivers`` entry point; both fixtures are defined here.
"""

from __future__ import annotations

import pytest

from pytest_jumpstarter.driver import Driver
from pytest_jumpstarter.plugin import device_fixture

from .driver import SshShell
from .files import Files, Transfer

__all__ = ["Files", "SshShell", "Transfer"]

ssh = device_fixture("ssh", doc="The SSH shell (driver ssh) of the current target's board.")
files = device_fixture("files", doc="Verified put/get (driver files) for the current target's board.")


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[type[Driver]]:
    return [SshShell, Files]
