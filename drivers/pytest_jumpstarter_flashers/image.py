"""The image pipeline every flasher shares: open, decompress, skip what need not be written, checksum.

An image is a local file or an ``http(s)`` URL, raw or compressed (``.gz``, ``.xz``, ``.bz2``,
``.zst``, chosen by the name's suffix).  It is read once, as a stream, in fixed-size blocks:

- a hole of a sparse local file (``SEEK_DATA``/``SEEK_HOLE``) is never read, and a block that is all
  zeros is not handed over as data: flashers skip it (the target is a fresh file whose holes read
  as zeros) or zero it by the cheapest means they have;
- a CRC-32 per block is kept, so a flasher can verify what it wrote block by block and name the
  first block that differs; the image's checksum is their combination (or a SHA-256 on request);
- a stream that ends early (a truncated compressed file, an HTTP body shorter than its
  ``Content-Length``) is an error naming the offset, never a shorter image flashed quietly.

zstd uses the ``zstandard`` package when it is installed, else Debian's ``zstd`` command.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import lzma
import os
import shutil
import subprocess
import threading
import urllib.parse
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

from pytest_jumpstarter.process import Child

#: The unit in which images are read, checked for zeros, written and verified.
BLOCK_SIZE = 1024 * 1024

COMPRESSIONS = {".gz": "gzip", ".xz": "xz", ".bz2": "bzip2", ".zst": "zstd"}


class ImageError(Exception):
    """An image could not be read; flashers turn it into a FlashError naming their method."""


@dataclass(frozen=True)
class Block:
    """``length`` bytes of the image at ``offset``; ``data`` is ``None`` when they are all zero."""

    offset: int
    length: int
    data: bytes | None

    @property
    def is_zero(self) -> bool:
        return self.data is None

    def content(self) -> bytes:
        return self.data if self.data is not None else bytes(self.length)


def _account(digest: Digest, block: tuple[bytes, Future[int] | int]) -> None:
    data, crc = block
    digest.add(data, crc if isinstance(crc, int) else crc.result())


def _gf2_times(matrix: list[int], vector: int) -> int:
    total = 0
    index = 0
    while vector:
        if vector & 1:
            total ^= matrix[index]
        vector >>= 1
        index += 1
    return total


def _gf2_compose(a: list[int], b: list[int]) -> list[int]:
    return [_gf2_times(a, column) for column in b]


_SHIFT_CACHE: dict[int, list[int]] = {}


def _crc32_shift(length: int) -> list[int]:
    """The GF(2) operator that appends ``length`` zero bytes to a (raw) CRC-32 register."""
    cached = _SHIFT_CACHE.get(length)
    if cached is not None:
        return cached
    one_bit = [0xEDB88320] + [1 << n for n in range(31)]
    power = one_bit
    for _ in range(3):  # 8 bits: one zero byte
        power = _gf2_compose(power, power)
    result = [1 << n for n in range(32)]
    remaining = length
    while remaining:
        if remaining & 1:
            result = _gf2_compose(power, result)
        remaining >>= 1
        if remaining:
            power = _gf2_compose(power, power)
    _SHIFT_CACHE[length] = result
    return result


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """``zlib.crc32(a + b)`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)`` (as zlib's crc32_combine)."""
    return _gf2_times(_crc32_shift(length2), crc1) ^ crc2 if length2 > 0 else crc1


@dataclass
class Digest:
    """What was read so far: size, one CRC-32 per block (for verification), and the image's checksum.

    The checksum is the CRC-32 of the whole image, combined from the block CRCs at no extra pass;
    ``algorithm="sha256"`` adds a SHA-256 pass over every byte (zeros included).
    """

    block_size: int
    algorithm: str = "crc32"
    size: int = 0
    data_bytes: int = 0
    crcs: list[int] = field(default_factory=list)
    crc: int = 0
    _sha: Any = None

    def add(self, data: bytes, crc: int) -> None:
        self.crcs.append(crc)
        self.crc = crc32_combine(self.crc, crc, len(data))
        if self.algorithm == "sha256":
            if self._sha is None:
                import hashlib

                self._sha = hashlib.sha256()
            self._sha.update(data)

    @property
    def checksum(self) -> str:
        if self.algorithm == "sha256":
            import hashlib

            sha = self._sha or hashlib.sha256()
            return "sha256:" + str(sha.hexdigest())
        return f"crc32:{self.crc:08x}"


class _Reader(Protocol):
    def read(self, size: int) -> bytes: ...


_ZERO_CACHE: dict[int, tuple[bytes, int]] = {}


def zero_block(length: int) -> tuple[bytes, int]:
    """``length`` zero bytes and their CRC-32 (cached: holes are common)."""
    cached = _ZERO_CACHE.get(length)
    if cached is None:
        zeros = bytes(length)
        cached = _ZERO_CACHE[length] = (zeros, zlib.crc32(zeros))
    return cached


class Image:
    """One image being read.  Use as a context manager; iterate :meth:`blocks` once."""

    def __init__(
        self, source: str | PathLike[str], *, timeout: float = 30.0, checksum: str = "crc32"
    ) -> None:
        self.source = os.fspath(source)
        self.timeout = timeout
        parsed = urllib.parse.urlparse(self.source)
        self.is_url = parsed.scheme in ("http", "https")
        name = parsed.path if self.is_url else self.source
        self.compression = next((c for s, c in COMPRESSIONS.items() if name.endswith(s)), None)
        self.name = Path(name).name or self.source
        self._stack = contextlib.ExitStack()
        self._raw: _Reader | None = None
        self._fd: int | None = None
        #: Bytes the source announced (file size or Content-Length of an uncompressed image), if known.
        self.expected_size: int | None = None
        self.checksum = checksum
        self.digest = Digest(BLOCK_SIZE, checksum)

    def __enter__(self) -> Image:
        try:
            if self.is_url:
                self._raw = self._open_url()
            else:
                self._open_file()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # --- opening ------------------------------------------------------------------------------

    def _open_file(self) -> None:
        path = Path(self.source).expanduser()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageError(f"cannot open image {str(path)!r}: {exc.strerror}") from exc
        self._stack.callback(os.close, fd)
        size = os.fstat(fd).st_size
        if self.compression is None:
            self._fd = fd
            self.expected_size = size
        else:
            self._raw = os.fdopen(os.dup(fd), "rb", buffering=0)
            self._stack.callback(self._raw.close)

    def _open_url(self) -> _Reader:
        # The HTTP stack (ssl included) costs ~8 ms to import: paid by URL flashes, not by every pytest start.
        import http.client
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.source, headers={"Accept-Encoding": "identity"})
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise ImageError(
                f"image URL {self.source}: server answered HTTP {exc.code} {exc.reason}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ImageError(f"image URL {self.source}: cannot connect ({reason})") from exc
        self._stack.callback(response.close)
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and self.compression is None:
            self.expected_size = int(length)
        return response

    # --- reading ------------------------------------------------------------------------------

    def blocks(self, block_size: int = BLOCK_SIZE) -> Iterator[Block]:
        """The image as consecutive blocks (the last may be shorter), updating :attr:`digest`."""
        self.digest = Digest(block_size, self.checksum)
        if self._fd is not None:
            pieces = self._sparse_file_pieces(self._fd, block_size)
        else:
            assert self._raw is not None, "use the Image as a context manager"
            pieces = _fixed_blocks(self._decoded(self._raw), block_size)
        zeros, zero_crc = zero_block(block_size)
        digest = self.digest
        # A block's CRC is computed on a worker thread while the consumer writes it and the next
        # block is read (zlib and the I/O calls release the GIL); it is accounted one block later.
        previous: tuple[bytes, Future[int] | int] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-crc") as pool:
            for offset, data in pieces:
                length = len(data) if data is not None else block_size
                if data is not None and (data == zeros if length == block_size else not data.strip(b"\0")):
                    data = None
                current: tuple[bytes, Future[int] | int]
                if data is None:
                    current = (zeros, zero_crc) if length == block_size else zero_block(length)
                else:
                    current = (data, pool.submit(zlib.crc32, data))
                    digest.data_bytes += length
                if previous is not None:
                    _account(digest, previous)
                previous = current
                digest.size = offset + length
                yield Block(offset, length, data)
            if previous is not None:
                _account(digest, previous)
        if self.expected_size is not None and digest.size != self.expected_size:
            raise ImageError(
                f"image {self.source}: expected {self.expected_size} bytes, the stream ended after "
                f"{digest.size} (truncated download or file changed while reading?)"
            )

    def _sparse_file_pieces(self, fd: int, block_size: int) -> Iterator[tuple[int, bytes | None]]:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            data_start = _seek(fd, offset, os.SEEK_DATA, size)
            # Whole blocks inside the hole are zeros without reading them.
            while offset + block_size <= data_start:
                yield offset, None
                offset += block_size
            if offset >= size:
                break
            length = min(block_size, size - offset)
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise ImageError(
                    f"image {self.source}: short read at offset {offset} "
                    f"(expected {length} bytes, got {len(data)}; file truncated while reading?)"
                )
            yield offset, data
            offset += length

    def _decoded(self, raw: _Reader) -> Iterator[bytes]:
        """The decompressed byte stream, in pieces of any size."""
        import http.client

        read_size = 256 * 1024
        where = self.source

        def chunks() -> Iterator[bytes]:
            offset = 0
            while True:
                try:
                    piece = raw.read(read_size)
                except http.client.IncompleteRead as exc:
                    raise ImageError(
                        f"image URL {where}: the server closed the connection after "
                        f"{offset + len(exc.partial)} bytes, {exc.expected} more were announced "
                        "(truncated download)"
                    ) from exc
                except (OSError, http.client.HTTPException) as exc:
                    raise ImageError(f"image {where}: read failed at offset {offset}: {exc}") from exc
                if not piece:
                    return
                offset += len(piece)
                yield piece

        if self.compression is None:
            yield from chunks()
            return
        if self.compression == "zstd":
            yield from self._zstd(chunks())
            return
        decoder = _decoder(self.compression)
        produced = 0
        try:
            for piece in chunks():
                while piece:
                    for out in _inflate(decoder, piece):
                        produced += len(out)
                        yield out
                    piece = b""
                    if decoder.eof and decoder.unused_data:
                        # Concatenated members (``cat a.gz b.gz``) decode as one stream.
                        piece = decoder.unused_data
                        decoder = _decoder(self.compression)
            if self.compression == "gzip" and not decoder.eof:
                tail = decoder.flush()
                produced += len(tail)
                if tail:
                    yield tail
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
            raise ImageError(
                f"image {where}: {self.compression} data is corrupt after {produced} bytes of output: {exc}"
            ) from exc
        if not decoder.eof:
            raise ImageError(
                f"image {where}: the {self.compression} stream ends early after {produced} bytes of output "
                "(truncated file or download)"
            )

    def _zstd(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        try:
            import zstandard  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            yield from self._zstd_cli(pieces)
            return
        decoder = zstandard.ZstdDecompressor().decompressobj()
        produced = 0
        for piece in pieces:
            try:
                out = decoder.decompress(piece)
            except zstandard.ZstdError as exc:
                raise ImageError(
                    f"image {self.source}: zstd data is corrupt after {produced} bytes: {exc}"
                ) from exc
            produced += len(out)
            if out:
                yield out
        if not decoder.eof:
            raise ImageError(
                f"image {self.source}: the zstd stream ends early after {produced} bytes of output "
                "(truncated file or download)"
            )

    def _zstd_cli(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        zstd = shutil.which("zstd")
        if zstd is None:
            raise ImageError(
                f"image {self.source} is zstd-compressed: install the 'zstandard' Python package "
                "or the 'zstd' command (apt-get install zstd)"
            )
        proc = Child(
            [zstd, "-d", "-c", "-q"],
            device="image",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr="tail",
        )
        feed_error: list[BaseException] = []

        def feed() -> None:
            assert proc.stdin is not None
            try:
                for piece in pieces:
                    proc.stdin.write(piece)
            except BrokenPipeError:
                pass
            except BaseException as exc:  # re-raised in the reading thread
                feed_error.append(exc)
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

        feeder = threading.Thread(target=feed, name="zstd-feed", daemon=True)
        feeder.start()
        produced = 0
        try:
            assert proc.stdout is not None
            while out := proc.stdout.read(1024 * 1024):
                produced += len(out)
                yield out
            feeder.join(timeout=self.timeout)
            if feed_error:
                raise feed_error[0]
            proc.wait(self.timeout)
            err = proc.stderr_tail().strip()
            if proc.returncode != 0:
                raise ImageError(
                    f"image {self.source}: zstd failed after {produced} bytes of output "
                    f"(truncated or corrupt file): {err}"
                )
        finally:
            proc.kill()
            proc.close()
            feeder.join(timeout=5)


_OUT_LIMIT = 4 * 1024 * 1024


def _decoder(compression: str) -> Any:
    if compression == "gzip":
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if compression == "xz":
        return lzma.LZMADecompressor()
    return bz2.BZ2Decompressor()


def _inflate(decoder: Any, piece: bytes) -> Iterator[bytes]:
    """Everything ``piece`` decodes to, in bounded outputs (a zip bomb must not fill memory)."""
    if isinstance(decoder, lzma.LZMADecompressor | bz2.BZ2Decompressor):
        yield decoder.decompress(piece, _OUT_LIMIT)
        while not decoder.eof and not decoder.needs_input:
            yield decoder.decompress(b"", _OUT_LIMIT)
        return
    data = piece
    while data and not decoder.eof:
        yield decoder.decompress(data, _OUT_LIMIT)
        data = decoder.unconsumed_tail


def _fixed_blocks(pieces: Iterator[bytes], block_size: int) -> Iterator[tuple[int, bytes]]:
    """Re-cut a stream of arbitrary pieces into ``block_size`` blocks (the last may be shorter)."""
    buffer = bytearray()
    offset = 0
    for piece in pieces:
        buffer += piece
        while len(buffer) >= block_size:
            yield offset, bytes(buffer[:block_size])
            del buffer[:block_size]
            offset += block_size
    if buffer:
        yield offset, bytes(buffer)


def _seek(fd: int, offset: int, whence: int, size: int) -> int:
    """``lseek`` with SEEK_DATA/SEEK_HOLE; filesystems without them count as all data."""
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data after offset: the rest is a hole
            return size
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return offset if whence == os.SEEK_DATA else size
        raise


def open_image(source: str | PathLike[str], *, timeout: float = 30.0, checksum: str = "crc32") -> Image:
    """An :class:`Image` for ``source`` (a path or an ``http(s)`` URL), to use in a ``with``."""
    return Image(source, timeout=timeout, checksum=checksum)
