"""``qemu-disk``: write an image into a QEMU board's disk while the board is powered off.

A whole-disk flash writes a fresh sparse raw file in the board's workdir (zero blocks stay holes,
the file keeps at least the disk's old size, as a real card would) and hands it to the board with
``set_disk``; a partition flash writes into the board's per-run raw disk file (a qcow2 overlay is
first converted to a fresh raw file).  Base images are never opened for writing.  The board is
powered off before and on after (it boots what was flashed).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from pytest_jumpstarter_qemu import qemu_img

from pytest_jumpstarter.capabilities import DiskHost, Power
from pytest_jumpstarter.errors import DriverError
from pytest_jumpstarter.settings import setting

from .base import Destination, FlasherDriver, FlasherSettings, dump_file, verify_blocks, write_blocks
from .image import Image
from .progress import Progress

T = TypeVar("T")


def _as_flash_error(flasher: FlasherDriver[Any], dest: Destination, call: Callable[[], T]) -> T:
    """A qemu-img failure (not installed, failed, too slow) as this flash's error."""
    try:
        return call()
    except DriverError as exc:
        raise flasher.fail(dest, exc.message) from exc


def disk_size(flasher: FlasherDriver[Any], dest: Destination, path: Path, fmt: str) -> int:
    return _as_flash_error(flasher, dest, lambda: qemu_img.virtual_size(flasher.device_name, path, fmt))


def _to_raw(flasher: FlasherDriver[Any], dest: Destination, source: Path, fmt: str, raw: Path) -> None:
    _as_flash_error(flasher, dest, lambda: qemu_img.convert_to_raw(flasher.device_name, source, fmt, raw))


def read_disk(
    board: DiskHost, dest: Destination, path: str | PathLike[str], size: int, flasher: FlasherDriver[Any]
) -> int:
    """Copy ``size`` bytes of a QEMU board's disk, from ``dest.offset``, into ``path``."""
    disk = Path(board.disk_path(dest.storage))
    fmt = board.disk_format(dest.storage)
    if fmt != "raw":
        raw = flasher.ctx.workdir / f"dump-{dest.storage}.raw"
        _to_raw(flasher, dest, disk, fmt, raw)
        disk = raw
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return dump_file(fd, dest.offset, path, size)
    finally:
        os.close(fd)
        if fmt != "raw":
            disk.unlink(missing_ok=True)


@runtime_checkable
class DiskBoard(Power, DiskHost, Protocol):
    """What qemu-disk needs of its board: power, and disks that are files on this host."""


@dataclass(frozen=True, kw_only=True)
class QemuDiskSettings(FlasherSettings):
    board: str = setting(
        kind="ref", needs=(Power, DiskHost), doc="the board (a QEMU board) whose disk is flashed"
    )
    disk: str = setting("disk0", doc="the board's disk flashed when no target is given")
    power_on: bool = setting(True, doc="power the board on after flashing")


class QemuDiskFlasher(FlasherDriver[QemuDiskSettings]):
    """Flashes a disk of a QEMU board (``board:``) while it is off; the board then boots it."""

    name = "qemu-disk"
    default_storage = "disk0"

    _serial = itertools.count(1)

    @property
    def board(self) -> DiskBoard:
        return self.ctx.ref("board", DiskBoard)

    def resolve(self, target: str | None) -> Destination:
        if target is None:
            disk = self.ctx.settings.disk
            return Destination(disk, disk)
        if target in self.ctx.settings.partitions:
            return self.partition(target)
        return Destination(target, target)  # a disk name; the board says if it has none such

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        board = self.board
        board.off()
        yield
        if self.ctx.settings.power_on:
            board.on()

    def _current(self, dest: Destination) -> tuple[Path, str]:
        try:
            return Path(self.board.disk_path(dest.storage)), str(self.board.disk_format(dest.storage))
        except DriverError as exc:
            raise self.fail(dest, str(exc)) from exc

    def write(self, dest: Destination, image: Image, progress: Progress) -> int:
        board = self.board
        current, fmt = self._current(dest)
        whole = dest.offset == 0 and dest.size is None
        # The board's file: the board keeps using it after this flasher is gone.
        fresh = board.new_disk_file(f"flash-{self.device_name}-{dest.storage}-{next(self._serial)}.raw")
        if whole:
            keep_size = max(disk_size(self, dest, current, fmt), image.expected_size or 0)
            fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            os.ftruncate(fd, keep_size)
            zeros = "skip"
        elif fmt == "raw":
            fresh, keep_size = current, 0
            fd = os.open(fresh, os.O_RDWR | os.O_CLOEXEC)
            zeros = "write"
        else:
            _to_raw(self, dest, current, fmt, fresh)
            keep_size = 0
            fd = os.open(fresh, os.O_RDWR | os.O_CLOEXEC)
            zeros = "write"
        try:
            # No fsync: the file lives for this run only and QEMU reads it through the same page
            # cache, so durability against a host crash buys nothing (the block method does sync).
            written = write_blocks(self, dest, fd, image, progress, zeros=zeros, sync=False)
            end = max(dest.offset + image.digest.size, keep_size)
            if os.fstat(fd).st_size < end:
                os.ftruncate(fd, end)
        except BaseException:
            os.close(fd)
            if fresh != current:
                fresh.unlink(missing_ok=True)
            raise
        os.close(fd)
        if fresh != current:
            board.set_disk(dest.storage, fresh, "raw")
            if current.parent == fresh.parent and current.name.startswith("flash-"):
                current.unlink(missing_ok=True)  # an earlier flash's file: ours, never a base image
        return written

    def verify(self, dest: Destination, image: Image, progress: Progress) -> None:
        path, _ = self._current(dest)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            verify_blocks(self, dest, fd, image, progress)
        finally:
            os.close(fd)

    def dump(self, target: str, path: str | PathLike[str], size: int) -> int:
        return read_disk(self.board, self.resolve(target), path, size, self)
