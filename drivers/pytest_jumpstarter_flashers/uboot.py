"""``uboot-tftp``: flash through the board's own bootloader, as on a real board.

Power-cycle the board and stop U-Boot's autoboot on the serial console; then, chunk by chunk (each
fits the board's RAM), put the chunk in the TFTP folder, ``tftpboot`` it, write it to block storage
with the target description's command (``virtio write {addr} {block} {count}``, ``mmc write ...``),
and check U-Boot's ``crc32`` against the host's ``zlib.crc32``: of the copy read back from storage
into a second buffer when verifying (one check proves transfer and write; on a mismatch the RAM copy
is checked too, to say which failed, and ``cmp`` finds the first differing word), of the RAM copy
before writing otherwise.  A bad chunk is retried a bounded number of times; a chunk that is all
zeros is written from a zeroed buffer without being sent.  Then reset.

Any failure is a :class:`FlashError` naming the chunk, its image offset and storage block, and
what was expected against what U-Boot said.  A board that resets on its own (its banner or the
autoboot countdown shows up while a command runs) is reported as such at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Protocol, runtime_checkable

from pytest_jumpstarter.capabilities import DiskHost, HasConsole, Power, PowerState, Reset, TftpHost
from pytest_jumpstarter.driver import DeviceContext, Referred
from pytest_jumpstarter.errors import BoardReset, ConsoleTimeout, DriverError, FlashError
from pytest_jumpstarter.settings import setting
from pytest_jumpstarter.uboot import UBootShell

from .base import Destination, FlasherDriver, FlasherSettings
from .image import Image, zero_block
from .progress import MIB, Progress


@runtime_checkable
class UBootBoard(Power, HasConsole, Protocol):
    """What uboot-tftp needs of its board: power, and a console where U-Boot runs.

    It also uses, when the board has them: :class:`TftpHost` (the folder its TFTP server serves,
    unless ``tftp_root`` is set), :class:`PowerState` (with ``power_cycle: false``, to power on a
    board that is off), :class:`Reset` (``reset_after``; else the board is power-cycled) and
    :class:`DiskHost` (``dump()`` reads the disk file on the host).
    """


@dataclass(frozen=True, kw_only=True)
class UBootSettings(FlasherSettings):
    board: str = setting(
        kind="ref", needs=(Power, HasConsole), doc="the board (power + U-Boot console) to flash"
    )
    load_address: int = setting(0x40400000, doc="RAM address where chunks are loaded")
    ram_size: int = setting(256 * MIB, kind="size", doc="RAM usable from load_address (chunks fit in it)")
    chunk_size: int = setting(64 * MIB, kind="size", doc="largest chunk sent at once")
    block_size: int = setting(512, doc="the storage's block size")
    storage_init: str = setting("virtio scan; virtio dev 0", doc="U-Boot command selecting it")
    write_command: str = setting("virtio write {addr} {block} {count}", doc="RAM to storage")
    read_command: str = setting("virtio read {addr} {block} {count}", doc="storage to RAM")
    ipaddr: str = setting("10.0.2.15", doc="the board's address (setenv ipaddr)")
    serverip: str = setting("10.0.2.2", doc="the TFTP server as the board sees it")
    tftp_root: Path | None = setting(
        None, doc="folder the TFTP server serves (default: the board's, if it provides TftpHost)"
    )
    retries: int = setting(3, doc="attempts per chunk before giving up")
    command_timeout: float = setting(60.0, kind="duration", doc="deadline of one U-Boot command")
    prompt_timeout: float = setting(
        30.0, kind="duration", doc="how long to wait for U-Boot's prompt after power-on"
    )
    tftp_timeout: float = setting(1.0, kind="duration", doc="U-Boot's per-packet TFTP timeout (tftptimeout)")
    power_cycle: bool = setting(True, doc="power-cycle the board before flashing")
    reset_after: bool = setting(
        True, doc="reset the board after flashing (power-cycle it if it has no reset)"
    )
    host_disk: str = setting("disk0", doc="the board's disk that dump() reads on the host (a DiskHost board)")


@dataclass
class _Chunk:
    index: int
    offset: int  # in the image
    data: bytes | None  # None: all zeros
    length: int


class UBootTftpFlasher(FlasherDriver[UBootSettings]):
    """Flashes through U-Boot: TFTP into RAM in chunks, CRC-checked, written with the storage command."""

    name = "uboot-tftp"
    default_storage = "disk"

    def __init__(self, ctx: DeviceContext[UBootSettings]) -> None:
        super().__init__(ctx)
        self._zero_ready = 0
        #: Retries done in the last flash, by chunk index (for reports and tests).
        self.retried: dict[int, int] = {}

    @classmethod
    def check(cls, settings: UBootSettings) -> Iterable[tuple[str, str]]:
        if settings.block_size <= 0 or settings.block_size % 4:
            yield "block_size", f"expected a positive multiple of 4 bytes, found {settings.block_size}"
        if settings.ram_size < 3 * MIB:
            yield (
                "ram_size",
                f"expected at least 3M (a chunk, its read-back and zeros), found {settings.ram_size}",
            )
        if settings.retries < 1:
            yield "retries", f"expected at least 1 attempt, found {settings.retries}"

    @classmethod
    def check_refs(cls, settings: UBootSettings, refs: Mapping[str, Referred]) -> Iterable[tuple[str, str]]:
        board = refs.get("board")
        if settings.tftp_root is None and board is not None and TftpHost not in board.provides:
            yield (
                "board",
                f"uboot-tftp needs a tftp_root: set tftp_root or use a board that provides TftpHost "
                f"(tftp_root); {board.describe()} does not",
            )

    # --- console ------------------------------------------------------------------------------

    @property
    def board(self) -> UBootBoard:
        return self.ctx.ref("board", UBootBoard)

    @property
    def uboot(self) -> UBootShell:
        """The U-Boot helper on the board's console (a new console after each power-on)."""
        return UBootShell(self.board.console)

    def run(self, command: str, timeout: float | None = None, what: str = "", check: bool = True) -> str:
        """Run a U-Boot command; return its output.  Finds it between markers, not by the echo.

        A non-zero status raises unless ``check`` is false (``cmp`` fails when it finds a difference).
        """
        timeout = self.ctx.settings.command_timeout if timeout is None else timeout
        try:
            result = self.uboot.run(command, timeout=timeout)
        except ConsoleTimeout as exc:
            raise _CommandFailed(
                f"U-Boot command {command!r} did not finish within {timeout}s{what}\n"
                f"last console lines:\n{exc.console_tail}"
            ) from None
        except BoardReset as exc:
            raise _BoardReset(
                f"the board reset while running {command!r}{what} (console showed {exc.shown!r})"
            ) from None
        if result.status != 0 and check:
            raise _CommandFailed(
                f"U-Boot command {command!r} failed (status {result.status}){what}:\n{result.output}"
            )
        return result.output

    def interrupt(self, timeout: float | None = None) -> None:
        """Stop U-Boot at an idle prompt (see :meth:`UBootShell.interrupt`)."""
        timeout = self.ctx.settings.prompt_timeout if timeout is None else timeout
        try:
            self.uboot.interrupt(timeout)
        except ConsoleTimeout as exc:
            raise FlashError(
                self.device_name,
                f"{self.name}: no U-Boot prompt within {timeout}s after power-on\n"
                f"last console lines:\n{exc.console_tail}",
            ) from None

    # --- session: power-cycle, stop autoboot, network, storage ----------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        board = self.board
        settings = self.ctx.settings
        if settings.power_cycle:
            board.cycle()
        elif (state := self.ctx.provided("board", PowerState)) is not None and not state.is_running:
            board.on()
        self.interrupt()
        self._zero_ready = 0
        self.retried = {}
        try:
            timeout_ms = int(settings.tftp_timeout * 1000)
            self.run(
                f"setenv ipaddr {settings.ipaddr}; setenv serverip {settings.serverip}; "
                f"setenv netretry no; setenv tftptimeout {timeout_ms}; setenv tftptimeoutcountmax 5; "
                "setenv autoload no",
                what=" (network set-up)",
            )
            if settings.storage_init:
                self.run(settings.storage_init, what=" (storage set-up)")
        except (_CommandFailed, _BoardReset) as exc:
            raise FlashError(self.device_name, f"{self.name}: preparing U-Boot failed: {exc}") from exc
        yield
        if settings.reset_after:
            reset = self.ctx.provided("board", Reset)
            if reset is not None:
                reset.reset()
            else:
                board.cycle()

    # --- writing ------------------------------------------------------------------------------

    def _tftp_root(self, dest: Destination) -> Path:
        root = self.ctx.settings.tftp_root
        if root is None and (host := self.ctx.provided("board", TftpHost)) is not None:
            root = host.tftp_root
        if root is None:
            raise self.fail(
                dest,
                "no TFTP folder: give the board user networking with tftp (network: {tftp: true}) "
                "or set tftp_root to the folder your TFTP server serves",
            )
        return Path(root)

    def _chunk_size(self) -> int:
        s = self.ctx.settings
        # Three buffers: the chunk, its read-back, and zeros for all-zero chunks; whole pipeline blocks.
        size = min(s.chunk_size, s.ram_size // 3)
        return max(MIB, size - size % MIB)

    def _chunks(self, image: Image, chunk_size: int) -> Iterator[_Chunk]:
        parts: list[tuple[bytes | None, int]] = []
        start = 0
        length = 0
        index = 0
        for block in image.blocks():
            parts.append((block.data, block.length))
            length += block.length
            if length >= chunk_size:
                yield _make_chunk(index, start, parts, length)
                index += 1
                start += length
                parts, length = [], 0
        if length:
            yield _make_chunk(index, start, parts, length)

    def write(self, dest: Destination, image: Image, progress: Progress) -> int:
        block_size = self.ctx.settings.block_size
        if dest.offset % block_size:
            raise self.fail(dest, f"offset {dest.offset} is not a multiple of the block size {block_size}")
        chunk_size = self._chunk_size()
        root = self._tftp_root(dest)
        written = 0
        for chunk in self._chunks(image, chunk_size):
            if dest.size is not None and chunk.offset + chunk.length > dest.size:
                raise self.fail(
                    dest,
                    f"image does not fit: chunk {chunk.index} ends at image offset "
                    f"{chunk.offset + chunk.length}, the partition holds {dest.size} bytes",
                )
            written += self._flash_chunk(dest, root, chunk, chunk_size)
            progress.update(chunk.offset + chunk.length)
        return written

    def _flash_chunk(self, dest: Destination, root: Path, chunk: _Chunk, chunk_size: int) -> int:
        s = self.ctx.settings
        block_size = s.block_size
        load = s.load_address
        readback = load + chunk_size
        zeros = load + 2 * chunk_size
        padded = -(-chunk.length // block_size) * block_size
        first_block = (dest.offset + chunk.offset) // block_size
        count = padded // block_size
        where = (
            f"chunk {chunk.index} (image offset {chunk.offset}, {chunk.length} bytes, "
            f"storage block {first_block:#x}+{count:#x})"
        )
        verify = self.verifying
        attempts = max(1, s.retries)
        problems: list[str] = []
        read = s.read_command
        if chunk.data is None and chunk.length % block_size:
            chunk.data = bytes(chunk.length)  # a short zero tail: send it, so the block's rest is kept
        for attempt in range(attempts):
            try:
                if chunk.data is None:
                    if self._zero_ready < padded:
                        self.run(f"mw.l {zeros:#x} 0 {padded // 4:#x}")
                        self._zero_ready = padded
                    source = zeros
                    sent = 0
                else:
                    if padded != chunk.length:
                        # The image ends inside a block: load that block from storage first, so
                        # the bytes after the image's end are written back as they were.
                        last = f"{first_block + count - 1:#x}"
                        self._storage(
                            read.format(addr=f"{load + padded - block_size:#x}", block=last, count="0x1"),
                            where,
                            "read",
                        )
                    # Verifying checks the read-back copy instead, which proves transfer and write at once.
                    expected = self._load(root, chunk, chunk.data, load, check=not verify)
                    source = load
                    sent = chunk.length
                self._storage(
                    s.write_command.format(
                        addr=f"{source:#x}", block=f"{first_block:#x}", count=f"{count:#x}"
                    ),
                    where,
                    "written",
                )
                if verify:
                    self._storage(
                        read.format(addr=f"{readback:#x}", block=f"{first_block:#x}", count=f"{count:#x}"),
                        where,
                        "read",
                    )
                    if chunk.data is None:
                        self._compare(source, readback, padded, chunk, first_block)
                    else:
                        self._check_readback(load, readback, chunk, expected, first_block)
                return sent
            except _Retry as exc:
                problems.append(f"attempt {attempt + 1}: {exc}")
                self.retried[chunk.index] = attempt + 1
                if attempt + 1 < attempts:
                    self.ctx.progress(f"{self.device_name} ({self.name}): {where}: {exc}; retrying")
            except _BoardReset as exc:
                raise self.fail(dest, f"{where}: {exc}") from exc
            except _CommandFailed as exc:
                raise self.fail(dest, f"{where}: {exc}") from exc
            except FlashError:
                raise
            except DriverError as exc:  # the board itself failed: QEMU died, the console closed
                raise self.fail(dest, f"{where}: {exc}") from exc
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        raise self.fail(dest, f"{where} failed, {tries}:\n  " + "\n  ".join(problems))

    def _load(self, root: Path, chunk: _Chunk, data: bytes, load: int, check: bool) -> int:
        """Stage ``data`` in the TFTP folder and ``tftpboot`` it; with ``check``, compare U-Boot's CRC32.

        Returns the host's CRC32 of ``data``.
        """
        name = f"jumpstarter-{os.getpid()}-{self.device_name}-{chunk.index}.bin"
        path = root / name
        expected = zlib.crc32(data)
        self._stage(path, data)
        try:
            try:
                output = self.run(f"tftpboot {load:#x} {name}")
            except _CommandFailed as exc:
                raise _Retry(f"tftpboot failed: {_tftp_reason(str(exc))}") from exc
            m = re.search(r"Bytes transferred = (\d+)", output)
            if not m or int(m.group(1)) != len(data):
                found = m.group(1) if m else "no 'Bytes transferred' line"
                raise _Retry(f"tftpboot transferred {found}, expected {len(data)} bytes")
            if check:
                self._check_ram(load, len(data), expected)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return expected

    def _crc32(self, address: int, length: int) -> int:
        output = self.run(f"crc32 {address:#x} {length:#x}")
        m = re.search(r"==> ([0-9a-fA-F]{8})", output)
        if not m:
            raise _CommandFailed(f"crc32 printed no checksum: {output!r}")
        return int(m.group(1), 16)

    def _check_ram(self, load: int, length: int, expected: int) -> None:
        found = self._crc32(load, length)
        if found != expected:
            raise _Retry(f"CRC32 after TFTP: expected {expected:08x} (host), found {found:08x} (U-Boot)")

    def _check_readback(self, load: int, readback: int, chunk: _Chunk, expected: int, block: int) -> None:
        """The storage's copy must have the host's CRC32; if not, find out whether TFTP or storage failed."""
        found = self._crc32(readback, chunk.length)
        if found == expected:
            return
        self._check_ram(load, chunk.length, expected)  # raises if the transfer was bad
        padded = -(-chunk.length // 4) * 4
        self._compare(load, readback, padded, chunk, block)
        raise _Retry(f"read-back CRC32: expected {expected:08x} (host), found {found:08x} (U-Boot)")

    def _stage(self, path: Path, data: bytes) -> None:
        """Put a chunk where the TFTP server serves it (a separate step so faults can be injected)."""
        path.write_bytes(data)

    def _storage(self, command: str, where: str, done: str) -> None:
        try:
            output = self.run(command)
        except _CommandFailed as exc:
            raise _Retry(str(exc)) from exc
        # "virtio write: device 0 block # 0, count 8 ... 8 blocks written: OK"; mmc says the same.
        if f"{done}: OK" not in output:
            raise _Retry(f"{command!r} did not report '{done}: OK': {output.strip()[-200:]!r}")

    def _compare(self, source: int, readback: int, length: int, chunk: _Chunk, block: int) -> None:
        output = self.run(
            f"cmp.l {source:#x} {readback:#x} {length // 4:#x}",
            what=f" (verify chunk {chunk.index})",
            check=False,
        )
        if f"Total of {length // 4} word(s) were the same" in output:
            return
        m = re.search(
            r"word at 0x([0-9a-f]+) \(0x([0-9a-f]+)\) != word at 0x([0-9a-f]+) \(0x([0-9a-f]+)\)", output
        )
        if m:
            offset = int(m.group(1), 16) - source
            byte = block * self.ctx.settings.block_size + offset
            raise _Retry(
                f"read-back differs at image offset {chunk.offset + offset} (storage byte "
                f"{byte}): expected word 0x{m.group(2)}, "
                f"found 0x{m.group(4)}"
            )
        raise _Retry(f"read-back compare gave no verdict: {output.strip()[-200:]!r}")

    # --- verify and dump ----------------------------------------------------------------------

    def verify(self, dest: Destination, image: Image, progress: Progress) -> None:
        """Done chunk by chunk in :meth:`write`: the read-back copy's CRC32 against the host's."""

    def dump(self, target: str, path: str | PathLike[str], size: int) -> int:
        """Read storage back: from the board's disk file when the host can see it (a QEMU board)."""
        dest = self.resolve(target)
        disks = self.ctx.provided("board", DiskHost)
        if disks is None:
            raise self.fail(
                dest,
                f"dump needs a board whose disk the host can read (DiskHost); "
                f"board {self.ctx.settings.board!r} is not one",
            )
        from .qemu_disk import read_disk

        host = Destination(dest.name, self.ctx.settings.host_disk, dest.offset, dest.size)
        return read_disk(disks, host, path, size, self)


def _make_chunk(index: int, offset: int, parts: list[tuple[bytes | None, int]], length: int) -> _Chunk:
    if all(data is None for data, _ in parts):
        return _Chunk(index, offset, None, length)
    joined = b"".join(data if data is not None else zero_block(size)[0] for data, size in parts)
    return _Chunk(index, offset, joined, length)


def _tftp_reason(text: str) -> str:
    for pattern in (r"TFTP error: [^\n]*", r"Retry count exceeded[^\n]*", r"File not found[^\n]*"):
        if m := re.search(pattern, text):
            return m.group(0).strip()
    return text.strip().splitlines()[-1] if text.strip() else "no output"


class _Retry(Exception):
    """This chunk went wrong in a way another attempt may fix."""


class _CommandFailed(Exception):
    """A U-Boot command failed or timed out."""


class _BoardReset(Exception):
    """The board restarted while we were using it."""


__all__ = ["DriverError", "UBootTftpFlasher"]
