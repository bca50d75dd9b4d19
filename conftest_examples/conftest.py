"""Example hooks: what a lab adds around every device without touching the tests.

``optionalhook=True`` keeps this file valid when the plugin is switched off (``-p no:jumpstarter``).
"""

from __future__ import annotations

import logging
import time

import pytest

log = logging.getLogger("lab")


@pytest.hookimpl(optionalhook=True)
def pytest_jumpstarter_device_ready(device, item):
    # Runs after a device started (or was reset) for a test: a place to log in, check a firmware
    # version, or record which board served which test in the JUnit report.
    if item is not None:
        stamp = f"{device.ctx.target} ready at {time.time():.0f}"
        item.user_properties.append((f"device:{device.device_name}", stamp))
    log.info("%s is ready for %s", device, item.nodeid if item else "(no test)")


@pytest.hookimpl(optionalhook=True)
def pytest_jumpstarter_device_teardown(device, item):
    # Runs before a device is stopped: a place to collect logs from the board while it still runs.
    log.info("stopping %s (last used by %s)", device, item.nodeid if item else "(no test)")
