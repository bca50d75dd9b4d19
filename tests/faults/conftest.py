"""The fault-injection suite: real QEMU boards in an inner pytest run, a fault injected, and then what
the user saw and what was left behind, checked against the PIDs and paths the inner run recorded.

Each test writes a JSON record (fault, what the user saw, what was left, seconds to end) into
$JUMPSTARTER_FAULT_RECORDS (default: build/fault-records); scripts/reliability-report renders them
as RELIABILITY.md.
"""

from __future__ import annotations

import pytest
from pytest_jumpstarter_qemu.images import Images, require_images


@pytest.fixture(scope="session")
def images() -> Images:
    return require_images()
