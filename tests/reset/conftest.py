"""Fixtures of the reset family's tests (helpers are in reset_support)."""

from __future__ import annotations

import pytest
from pytest_jumpstarter_qemu.images import LINUX_INITRD, LINUX_KERNEL, Images, require_images


@pytest.fixture(scope="session")
def images() -> Images:
    return require_images(LINUX_KERNEL, LINUX_INITRD)
