"""Fixtures for the QEMU family's tests (helpers are in qemu_board_helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images, require_images
from qemu_board_helpers import MakeBoard, board_from


@pytest.fixture(scope="session")
def images() -> Images:
    return require_images()


@pytest.fixture
def make_board(tmp_path: Path, images: Images) -> Iterator[MakeBoard]:
    """Build boards that are stopped (and checked gone) at the end of the test."""
    boards: list[QemuBoard] = []

    def make(settings: dict[str, Any], name: str = "qemu_vm") -> QemuBoard:
        board = board_from(settings, tmp_path / f"{name}-{len(boards)}", name)
        boards.append(board)
        return board

    yield make
    for board in boards:
        board.stop()
        assert not board.is_running
