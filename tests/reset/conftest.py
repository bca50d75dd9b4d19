"""Fixtures of the reset family's tests: demo images, and the records inner runs leave behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pytest_jumpstarter_qemu.images import Images, require_images


@pytest.fixture(scope="session")
def images() -> Images:
    return require_images("linux-x86_64/vmlinuz", "linux-x86_64/initramfs.cpio.gz")


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines an inner run's tests appended to ``path``, in the order they ran."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
