"""``block``: write an image onto a block device or into an image file (an SD card behind a USB SD-mux).

Zero blocks are not written: a regular file is truncated first so they read back as holes, a
block device gets ``BLKZEROOUT`` for them.  Data is ``fsync``-ed, then read back block by block.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from pytest_jumpstarter.settings import setting

from .base import Destination, FlasherDriver, FlasherSettings, dump_file, verify_blocks, write_blocks
from .image import Image
from .progress import Progress


@dataclass(frozen=True, kw_only=True)
class BlockSettings(FlasherSettings):
    path: Path = setting(doc="the block device (/dev/sdX) or image file to write")
    create: bool = setting(True, doc="create the image file if it does not exist")


class BlockFlasher(FlasherDriver[BlockSettings]):
    """Flashes a block device or an image file named by ``path``."""

    name = "block"
    default_storage = "disk"

    def _open(self, dest: Destination, for_write: bool) -> int:
        path = self.ctx.settings.path
        flags = os.O_CLOEXEC | (os.O_RDWR if for_write else os.O_RDONLY)
        if for_write and self.ctx.settings.create:
            flags |= os.O_CREAT
        try:
            return os.open(path, flags, 0o644)
        except OSError as exc:
            raise self.fail(
                dest, f"cannot open {str(path)!r} for {'writing' if for_write else 'reading'}: {exc.strerror}"
            ) from exc

    def write(self, dest: Destination, image: Image, progress: Progress) -> int:
        fd = self._open(dest, for_write=True)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                if dest.offset == 0 and dest.size is None:
                    # The whole file is the image: start from an empty sparse file, skip zero blocks.
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, image.expected_size or 0)
                    zeros = "skip"
                else:
                    zeros = "write"  # a region of a file that holds other data
                written = write_blocks(self, dest, fd, image, progress, zeros=zeros)
                end = dest.offset + image.digest.size
                if os.fstat(fd).st_size < end:
                    os.ftruncate(fd, end)  # a trailing hole still belongs to the image
                    os.fsync(fd)
                return written
            return write_blocks(self, dest, fd, image, progress, zeros="zeroout")
        finally:
            os.close(fd)

    def verify(self, dest: Destination, image: Image, progress: Progress) -> None:
        fd = self._open(dest, for_write=False)
        try:
            verify_blocks(self, dest, fd, image, progress)
        finally:
            os.close(fd)

    def dump(self, target: str, path: str | PathLike[str], size: int) -> int:
        dest = self.resolve(target)
        fd = self._open(dest, for_write=False)
        try:
            return dump_file(fd, dest.offset, path, size)
        finally:
            os.close(fd)
