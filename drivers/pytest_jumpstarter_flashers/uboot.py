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
import itertools
import os
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from pytest_jumpstarter.capabilities import Reset
from pytest_jumpstarter.errors import ConsoleTimeout, DriverError, FlashError
from pytest_jumpstarter.settings import Setting

from .base import Destination, FlasherDriver
from .image import Image, zero_block
from .progress import MIB, Progress

PROMPT = r"\r\n=> "
#: Output that means the board restarted under us (its banner, or autoboot counting down again).
RESET_PATTERNS = (r"\r\nU-Boot \d{4}\.\d{2}[^\r\n]*", r"Hit any key to stop autoboot")


@dataclass
class _Chunk:
    index: int
    offset: int  # in the image
    data: bytes | None  # None: all zeros
    length: int


class UBootTftpFlasher(FlasherDriver):
    """Flashes through U-Boot: TFTP into RAM in chunks, CRC-checked, written with the storage command."""

    name = "uboot-tftp"
    default_storage = "disk"
    settings = {
        **FlasherDriver.common_settings,
        "board": Setting("ref", doc="the board (power + U-Boot console) to flash"),
        "load_address": Setting("int", default=0x40400000, doc="RAM address where chunks are loaded"),
        "ram_size": Setting("size", default=256 * MIB, doc="RAM usable from load_address (chunks fit in it)"),
        "chunk_size": Setting("size", default=64 * MIB, doc="largest chunk sent at once"),
        "block_size": Setting("int", default=512, doc="the storage's block size"),
        "storage_init": Setting(
            "str", default="virtio scan; virtio dev 0", doc="U-Boot command selecting it"
        ),
        "write_command": Setting("str", default="virtio write {addr} {block} {count}", doc="RAM to storage"),
        "read_command": Setting("str", default="virtio read {addr} {block} {count}", doc="storage to RAM"),
        "ipaddr": Setting("str", default="10.0.2.15", doc="the board's address (setenv ipaddr)"),
        "serverip": Setting("str", default="10.0.2.2", doc="the TFTP server as the board sees it"),
        "tftp_root": Setting(
            "path", default=None, doc="folder the TFTP server serves (default: board.tftp_root)"
        ),
        "retries": Setting("int", default=3, doc="attempts per chunk before giving up"),
        "command_timeout": Setting("duration", default=60.0, doc="deadline of one U-Boot command"),
        "tftp_timeout": Setting(
            "duration", default=1.0, doc="U-Boot's per-packet TFTP timeout (tftptimeout)"
        ),
        "power_cycle": Setting("bool", default=True, doc="power-cycle the board before flashing"),
        "reset_after": Setting("bool", default=True, doc="reset the board after flashing"),
        "host_disk": Setting(
            "str", default="disk0", doc="the QEMU board's disk that dump() reads on the host"
        ),
    }

    _ids = itertools.count(1)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._zero_ready = 0
        #: Retries done in the last flash, by chunk index (for reports and tests).
        self.retried: dict[int, int] = {}

    # --- console ------------------------------------------------------------------------------

    @property
    def console(self) -> Any:
        return self.board.console

    def run(self, command: str, timeout: float | None = None, what: str = "", check: bool = True) -> str:
        """Run a U-Boot command; return its output.  Finds it between markers, not by the echo.

        A non-zero status raises unless ``check`` is false (``cmp`` fails when it finds a difference).
        """
        console = self.console
        timeout = self.ctx.settings.get("command_timeout", 60.0) if timeout is None else timeout
        token = f"{next(self._ids)}j{os.getpid() % 1000}"
        # Hush drops empty quotes, so the echoed command line never contains the joined markers.
        console.sendline(f'echo @@B""{token}@@; {command}; echo @@E""{token}:$?@@')
        done = re.compile(f"@@B{token}@@\r?\n(.*?)@@E{token}:(-?\\d+)@@{PROMPT}", re.DOTALL)
        try:
            index = console.expect([done, *RESET_PATTERNS], timeout=timeout)
        except ConsoleTimeout as exc:
            raise _CommandFailed(
                f"U-Boot command {command!r} did not finish within {timeout}s{what}\n"
                f"last console lines:\n{exc.console_tail}"
            ) from None
        if index != 0:
            shown = console.match.group(0).strip()
            raise _BoardReset(f"the board reset while running {command!r}{what} (console showed {shown!r})")
        output: str = console.match.group(1).replace("\r\n", "\n").rstrip("\n")
        status = int(console.match.group(2))
        if status != 0 and check:
            raise _CommandFailed(f"U-Boot command {command!r} failed (status {status}){what}:\n{output}")
        return output

    def _interrupt(self, timeout: float) -> None:
        """Get to an idle prompt: Ctrl-C stops autoboot and cancels a half-typed line alike."""
        console = self.console
        deadline = time.monotonic() + timeout
        while True:
            console.send("\x03")
            try:
                console.expect(PROMPT, timeout=0.5)
                break
            except ConsoleTimeout:
                if time.monotonic() >= deadline:
                    raise FlashError(
                        self.device_name,
                        f"{self.name}: no U-Boot prompt ({PROMPT!r}) within {timeout}s after power-on\n"
                        f"last console lines:\n{console.tail()}",
                    ) from None
        console.drain(quiet=0.05, limit=1.0)

    # --- session: power-cycle, stop autoboot, network, storage ----------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        board = self.board
        settings = self.ctx.settings
        if settings.get("power_cycle", True):
            board.cycle()
        elif not getattr(board, "is_running", True):
            board.on()
        self._interrupt(timeout=30.0)
        self._zero_ready = 0
        self.retried = {}
        try:
            timeout_ms = int(settings.get("tftp_timeout", 1.0) * 1000)
            self.run(
                f"setenv ipaddr {settings.get('ipaddr', '10.0.2.15')}; "
                f"setenv serverip {settings.get('serverip', '10.0.2.2')}; "
                f"setenv netretry no; setenv tftptimeout {timeout_ms}; setenv tftptimeoutcountmax 5; "
                "setenv autoload no",
                what=" (network set-up)",
            )
            init = settings.get("storage_init")
            if init:
                self.run(init, what=" (storage set-up)")
        except (_CommandFailed, _BoardReset) as exc:
            raise FlashError(self.device_name, f"{self.name}: preparing U-Boot failed: {exc}") from exc
        yield
        if settings.get("reset_after", True):
            # A board made of parts (driver board) has no reset line: cycling its power resets it.
            if isinstance(board, Reset):
                board.reset()
            else:
                board.cycle()

    # --- writing ------------------------------------------------------------------------------

    def _tftp_root(self, dest: Destination) -> Path:
        root = self.ctx.settings.get("tftp_root") or getattr(self.board, "tftp_root", None)
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
        size = min(int(s.get("chunk_size", 64 * MIB)), int(s.get("ram_size", 256 * MIB)) // 3)
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
        s = self.ctx.settings
        block_size = s.get("block_size", 512)
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
        block_size = s.get("block_size", 512)
        load = s.get("load_address", 0x40400000)
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
        attempts = max(1, s.get("retries", 3))
        problems: list[str] = []
        read = s.get("read_command", "virtio read {addr} {block} {count}")
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
                write = s.get("write_command", "virtio write {addr} {block} {count}")
                self._storage(
                    write.format(addr=f"{source:#x}", block=f"{first_block:#x}", count=f"{count:#x}"),
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
            byte = block * self.ctx.settings.get("block_size", 512) + offset
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
        board = self.board
        disk = getattr(board, "disk_path", None)
        if disk is None:
            raise self.fail(dest, "dump needs a board whose disk the host can read (disk_path)")
        from .qemu_disk import read_disk

        host = Destination(dest.name, self.ctx.settings.get("host_disk", "disk0"), dest.offset, dest.size)
        return read_disk(board, host, path, size, self)


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
