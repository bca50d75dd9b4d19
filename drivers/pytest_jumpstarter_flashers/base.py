"""What every flasher of the family shares: targets and partitions, the flash loop, results, file I/O.

A method (a driver) implements :meth:`FlasherDriver.write` (put the blocks of an image at a
destination), :meth:`FlasherDriver.verify` (read them back and compare), and :meth:`FlasherDriver.dump`;
it may wrap a whole flash in :meth:`FlasherDriver.session` (power the board off and on, stop U-Boot).
The base class turns that into ``flash(image, target, verify)`` returning a
:class:`~pytest_jumpstarter.capabilities.FlashResult`, and into a :class:`FlashError` naming the
method and the place for anything that went wrong.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import struct
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any, ClassVar, TypeVar

from pytest_jumpstarter.capabilities import FlashResult
from pytest_jumpstarter.driver import Driver
from pytest_jumpstarter.errors import FlashError
from pytest_jumpstarter.settings import SettingValueError, describe, setting

from .image import BLOCK_SIZE, Image, ImageError, open_image, zero_block
from .progress import MIB, Progress

ImageArg = str | PathLike[str]

#: ``BLKZEROOUT``: ask a block device to zero a byte range itself (often without moving the zeros).
_BLKZEROOUT = 0x127F


@dataclass(frozen=True)
class Destination:
    """Where one image goes: ``offset`` bytes into ``storage``, at most ``size`` bytes if known."""

    name: str
    storage: str
    offset: int = 0
    size: int | None = None

    def describe(self) -> str:
        if self.name != self.storage:
            return f"{self.name} ({self.storage} at offset {self.offset})"
        return self.storage


_PARTITION = re.compile(r"^\s*(?:(?P<storage>[^:+\s]+):)?(?P<offset>[^+\s]+)(?:\s*\+\s*(?P<size>\S+))?\s*$")


def _partition_shorthand(value: object) -> object:
    """``'[STORAGE:]OFFSET[+SIZE]'`` (``'disk0:1M+64M'``, ``'4M'``) as the partition's settings."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    m = _PARTITION.match(value) if isinstance(value, str) else None
    if m is None:
        raise SettingValueError(
            "expected '[STORAGE:]OFFSET[+SIZE]' such as 'disk:1M+64M', or {offset: 1M, size: 64M}, "
            f"found {describe(value)}"
        )
    parts = {"offset": m.group("offset")}
    if m.group("storage"):
        parts["storage"] = m.group("storage")
    if m.group("size"):
        parts["size"] = m.group("size")
    return parts


@dataclass(frozen=True, kw_only=True)
class Partition:
    """A named region of a storage, ``flash(image, target=NAME)``."""

    offset: int = setting(kind="size", doc="where it starts, in bytes (1M, 4096, ...)")
    size: int | None = setting(None, kind="size", doc="how long it is (default: to the storage's end)")
    storage: str | None = setting(None, doc="the storage it is on (default: the method's default storage)")


@dataclass(frozen=True, kw_only=True)
class FlasherSettings:
    """What every flasher method accepts."""

    partitions: dict[str, Partition] = setting(
        {},
        shorthand=_partition_shorthand,
        doc="named regions: 'NAME: [STORAGE:]OFFSET[+SIZE]' (sizes such as 1M) or "
        "NAME: {offset, size, storage}; flash(img, target=NAME)",
    )
    progress_interval: float = setting(5.0, kind="duration", doc="at most one progress line this often")
    download_timeout: float = setting(30.0, kind="duration", doc="deadline for each read of an image URL")
    checksum: str = setting(
        "crc32",
        choices=("crc32", "sha256"),
        doc="the image checksum reported: crc32 (free) or sha256 (one more pass over every byte)",
    )


FS = TypeVar("FS", bound=FlasherSettings)


class FlasherDriver(Driver[FS]):
    """Base of the flasher methods; ``name`` is the method as ``driver:`` names it.

    A method declares its settings as a dataclass derived from :class:`FlasherSettings`:
    ``class BlockFlasher(FlasherDriver[BlockSettings])``.
    """

    role = "flasher"
    #: The storage written when ``flash()`` is given no target.
    default_storage: ClassVar[str] = "disk"
    #: Every image flashed since start, with its checksum and where it went (for the test reports).
    flashed: tuple[str, ...] = ()

    # --- what a method provides ---------------------------------------------------------------

    def report_properties(self) -> dict[str, str]:
        """The images flashed since start, with their checksums (a property of each test's report)."""
        return {"flash": "; ".join(self.flashed)} if self.flashed else {}

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Around all the images of one ``flash()`` call (power the board off and on, ...)."""
        yield

    def write(self, dest: Destination, image: Image, progress: Progress) -> int:
        """Write ``image`` at ``dest``; return the bytes actually transferred."""
        raise NotImplementedError

    def verify(self, dest: Destination, image: Image, progress: Progress) -> None:
        """Read back what :meth:`write` wrote and raise :class:`FlashError` at the first difference."""
        raise NotImplementedError

    def storages(self) -> list[str]:
        """The storage names ``flash(target=...)`` accepts besides the partitions."""
        return [self.default_storage]

    def dump(self, target: str, path: str | PathLike[str], size: int) -> int:
        """Copy the first ``size`` bytes of ``target`` into the file ``path``; return bytes copied."""
        raise NotImplementedError

    # --- the shared flash loop ----------------------------------------------------------------

    def resolve(self, target: str | None) -> Destination:
        """The :class:`Destination` for a storage or partition name (``None``: the default storage)."""
        if target is None:
            return Destination(self.default_storage, self.default_storage)
        partitions = self.ctx.settings.partitions
        if target in partitions:
            return self.partition(target)
        if target in self.storages():
            return Destination(target, target)
        known = ", ".join(repr(n) for n in [*self.storages(), *partitions]) or "none"
        raise FlashError(
            self.device_name,
            f"{self.name}: no storage or partition named {target!r}; known: {known} "
            "(add it under 'partitions:' in the target description)",
        )

    def partition(self, name: str) -> Destination:
        """The :class:`Destination` of partition ``name`` of the settings."""
        part = self.ctx.settings.partitions[name]
        return Destination(name, part.storage or self.default_storage, part.offset, part.size)

    def flash(
        self,
        image: ImageArg | Mapping[str, ImageArg],
        target: str | None = None,
        verify: bool = True,
    ) -> Any:
        """Write ``image`` (or ``{partition: image}``) and, with ``verify``, prove it by reading back.

        Returns a :class:`FlashResult`, or a dict of them keyed by partition for a mapping.
        """
        self.require_started("flash()")
        if isinstance(image, Mapping):
            if target is not None:
                raise FlashError(self.device_name, f"{self.name}: give either target= or a mapping, not both")
            jobs = [(self.resolve(name), img) for name, img in image.items()]
        else:
            jobs = [(self.resolve(target), image)]
        results: dict[str, FlashResult] = {}
        with self.session():
            for dest, img in jobs:
                # One line on a tty, its elapsed time ticking; the progress lines below go into it.
                with self.ctx.activity(f"flashing {dest.name}"):
                    results[dest.name] = self._flash_one(dest, img, verify)
        if isinstance(image, Mapping):
            return results
        return results[jobs[0][0].name]

    #: Whether the flash in progress will be verified: a method that verifies while it writes
    #: (chunk by chunk, while the data is still at hand) reads it in :meth:`write`.
    verifying = True

    def _flash_one(self, dest: Destination, source: ImageArg, verify: bool) -> FlashResult:
        start = time.monotonic()
        settings = self.ctx.settings
        self.verifying = verify
        try:
            with open_image(source, timeout=settings.download_timeout, checksum=settings.checksum) as image:
                what = f"{self.device_name} ({self.name}) {image.name} -> {dest.name}"
                progress = Progress(
                    self.ctx.progress, what, image.expected_size, interval=settings.progress_interval
                )
                written = self.write(dest, image, progress)
                if dest.size is not None and image.digest.size > dest.size:
                    # write() stops at the partition's end; this only catches a method that does not.
                    raise self.fail(dest, f"image is {image.digest.size} bytes, the partition {dest.size}")
                if verify:
                    self.verify(dest, image, progress)
        except ImageError as exc:
            raise FlashError(self.device_name, f"{self.name} flash of {dest.describe()}: {exc}") from exc
        duration = time.monotonic() - start
        size = image.digest.size
        progress.finish(size, ", verified" if verify else ", not verified")
        # What the test reports say this device wrote (pytest_jumpstarter.reporting.ReportsProperties).
        self.flashed = (*self.flashed, f"{image.name} {image.digest.checksum} -> {dest.name}")
        return FlashResult(
            method=self.name,
            target=dest.name,
            bytes_written=written,
            image_size=size,
            duration=duration,
            checksum=image.digest.checksum,
            verified=verify,
        )

    def fail(self, dest: Destination, message: str) -> FlashError:
        return FlashError(self.device_name, f"{self.name} flash of {dest.describe()}: {message}")


# --- file and block-device targets (block, qemu-disk) -------------------------------------------


def write_blocks(
    flasher: FlasherDriver[Any],
    dest: Destination,
    fd: int,
    image: Image,
    progress: Progress,
    *,
    zeros: str,
    sync: bool = True,
) -> int:
    """Write the image's blocks into ``fd`` at ``dest.offset``; returns bytes written.

    ``zeros`` says what to do with an all-zero block: ``"skip"`` (the target reads as zeros there
    already: a fresh sparse file), ``"write"`` (write them), or ``"zeroout"`` (a block device:
    ``BLKZEROOUT``, writing them when the device cannot).  ``sync`` fsyncs at the end.
    """
    written = 0
    pending_zero: list[int] = []  # [start, end) of a run of zero blocks, flushed lazily
    for block in image.blocks():
        if dest.size is not None and block.offset + block.length > dest.size:
            raise flasher.fail(
                dest,
                f"image does not fit: block at image offset {block.offset} ends at "
                f"{block.offset + block.length}, the partition holds {dest.size} bytes",
            )
        position = dest.offset + block.offset
        if block.data is None:
            if zeros == "skip":
                pass
            elif pending_zero and pending_zero[1] == position:
                pending_zero[1] = position + block.length
            else:
                written += _zero_range(flasher, dest, fd, pending_zero, zeros)
                pending_zero = [position, position + block.length]
        else:
            written += _zero_range(flasher, dest, fd, pending_zero, zeros)
            pending_zero = []
            _pwrite_all(flasher, dest, fd, block.data, position)
            written += block.length
        progress.update(block.offset + block.length)
    written += _zero_range(flasher, dest, fd, pending_zero, zeros)
    if sync:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise flasher.fail(dest, f"fsync failed after writing: {exc.strerror}") from exc
    return written


def _pwrite_all(flasher: FlasherDriver[Any], dest: Destination, fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        try:
            count = os.pwrite(fd, view, position)
        except OSError as exc:
            raise flasher.fail(
                dest, f"write of {len(view)} bytes at offset {position} failed: {exc.strerror}"
            ) from exc
        if count == 0:
            raise flasher.fail(dest, f"write at offset {position} wrote nothing (storage full?)")
        view = view[count:]
        position += count


def _zero_range(flasher: FlasherDriver[Any], dest: Destination, fd: int, run: list[int], zeros: str) -> int:
    if not run:
        return 0
    start, end = run
    if zeros == "zeroout":
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, _BLKZEROOUT, struct.pack("QQ", start, end - start))
            return end - start
    block, _ = zero_block(BLOCK_SIZE)
    position = start
    while position < end:
        length = min(BLOCK_SIZE, end - position)
        _pwrite_all(flasher, dest, fd, block[:length], position)
        position += length
    return end - start


def verify_blocks(
    flasher: FlasherDriver[Any], dest: Destination, fd: int, image: Image, progress: Progress
) -> None:
    """Read the image's extent back from ``fd`` and compare block CRCs; name the first difference."""
    digest = image.digest
    size = digest.size
    block_size = digest.block_size
    _, zero_crc = zero_block(block_size)
    regular = stat.S_ISREG(os.fstat(fd).st_mode)
    if not regular:
        # A device: drop the cached pages (clean after fsync) so we read what the medium holds.
        # An image file's page cache is what its readers (QEMU) see, so it is the truth there.
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, dest.offset, size, os.POSIX_FADV_DONTNEED)
    for index, expected in enumerate(digest.crcs):
        offset = index * block_size
        length = min(block_size, size - offset)
        position = dest.offset + offset
        if regular and expected == zero_crc and length == block_size and _is_hole(fd, position, length):
            continue
        data = os.pread(fd, length, position)
        if len(data) != length:
            raise flasher.fail(
                dest,
                f"verify: block {index} at offset {position}: expected {length} bytes, "
                f"read back {len(data)} (storage shorter than the image?)",
            )
        found = zlib.crc32(data)
        if found != expected:
            first = _first_difference(data, image, offset, length)
            raise flasher.fail(
                dest,
                f"verify: block {index} (offset {position}, {length} bytes) differs: expected CRC32 "
                f"{expected:08x}, found {found:08x}{first}",
            )
        progress.update(offset + length, "verifying")


def _first_difference(data: bytes, image: Image, offset: int, length: int) -> str:
    """Where a zero block differs (the only block whose expected bytes we still know without re-reading)."""
    _, zero_crc = zero_block(length)
    if image.digest.crcs[offset // image.digest.block_size] != zero_crc:
        return ""
    for i, byte in enumerate(data):
        if byte:
            return f"; first non-zero byte at offset {offset + i}: {byte:#04x}"
    return ""


def _is_hole(fd: int, position: int, length: int) -> bool:
    try:
        data = os.lseek(fd, position, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    return data >= position + length


def dump_file(fd: int, offset: int, path: str | PathLike[str], size: int) -> int:
    """Copy ``size`` bytes from ``fd`` at ``offset`` into a new file ``path`` (holes stay holes)."""
    copied = 0
    zeros, _ = zero_block(BLOCK_SIZE)
    with open(path, "wb") as out:
        while copied < size:
            length = min(BLOCK_SIZE, size - copied)
            data = os.pread(fd, length, offset + copied)
            if not data:
                break
            if data == zeros[: len(data)]:
                out.seek(len(data), os.SEEK_CUR)
            else:
                out.write(data)
            copied += len(data)
        out.truncate(copied)
    return copied


__all__ = [
    "MIB",
    "Destination",
    "FlasherDriver",
    "FlasherSettings",
    "Partition",
    "dump_file",
    "verify_blocks",
    "write_blocks",
]
