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

Decompression is the standard library's file objects (``gzip``, ``lzma``, ``bz2``) and the
``zstandard`` package's decompressor for zstd.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import urllib.parse
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

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
        self._announced: int | None = None  # Content-Length of a URL, compressed or not
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
        if length is not None and length.isdigit():
            self._announced = int(length)
            if self.compression is None:
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
        """The decompressed byte stream, in pieces of at most ``_READ_SIZE`` bytes."""
        source = _Source(raw, self.source, self._announced)
        if self.compression is None:
            yield from iter(lambda: source.read(_READ_SIZE), b"")
            return
        produced = 0
        try:
            # The decompressors read 8 KiB at a time: a buffer in C spares a Python call for each.
            with _decompressing(self.compression, io.BufferedReader(source, _READ_SIZE)) as stream:
                while piece := stream.read(_READ_SIZE):
                    produced += len(piece)
                    yield piece
        except ImageError:
            raise
        except EOFError as exc:
            raise ImageError(
                f"image {self.source}: the {self.compression} stream ends early after {produced} bytes "
                "of output (truncated file or download)"
            ) from exc
        except (OSError, zlib.error, lzma.LZMAError) as exc:
            raise ImageError(
                f"image {self.source}: {self.compression} data is corrupt after {produced} bytes of "
                f"output: {exc}"
            ) from exc
        if source.offset == 0:
            raise ImageError(f"image {self.source}: the file is empty, not {self.compression} data")


#: How much is read from a source, and decompressed, at a time (bounded: a zip bomb must not fill memory).
_READ_SIZE = 256 * 1024


class _Source(io.RawIOBase):
    """The raw byte stream of an image, read once front to back; counts what it read and turns a
    failed or short read into an ImageError naming the offset."""

    def __init__(self, raw: _Reader, where: str, announced: int | None) -> None:
        super().__init__()
        self.raw = raw
        self.where = where
        self.announced = announced  # a URL's Content-Length
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        piece = self.read(len(buffer))
        buffer[: len(piece)] = piece
        return len(piece)

    def read(self, size: int = -1) -> bytes:
        import http.client  # loaded already for a URL; a file need not pay for it

        try:
            piece = self.raw.read(size)
        except http.client.IncompleteRead as exc:
            raise ImageError(
                f"image URL {self.where}: the server closed the connection after "
                f"{self.offset + len(exc.partial)} bytes, {exc.expected} more were announced "
                "(truncated download)"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ImageError(f"image {self.where}: read failed at offset {self.offset}: {exc}") from exc
        if not piece and size and self.announced is not None and self.offset < self.announced:
            raise ImageError(
                f"image URL {self.where}: the server closed the connection after {self.offset} bytes, "
                f"{self.announced - self.offset} more were announced (truncated download)"
            )
        self.offset += len(piece)
        return piece


def _decompressing(compression: str, source: io.BufferedReader) -> contextlib.AbstractContextManager[Any]:
    """A file object decompressing ``source``.  Each reads concatenated members or frames
    (``cat a.gz b.gz``) as one stream and raises EOFError where the data ends early."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(source)
    if compression == "bzip2":
        return bz2.BZ2File(source)
    return _ZstdReader(source)


class _ZstdReader(contextlib.AbstractContextManager["_ZstdReader"]):
    """zstd frames as a file object.  ``zstandard``'s own stream reader reports neither a frame that
    ends early nor, across frames, where one does; so its decompressor object is fed here, in 64 KiB
    slices of input (it has no output bound; even run-length blocks inflate a slice to a bounded
    size, in practice a few MiB)."""

    def __init__(self, source: io.BufferedReader) -> None:
        import zstandard  # ~10 ms: paid by .zst images, not by every run with a flasher

        self.zstd = zstandard
        self.source = source
        self.decoder = zstandard.ZstdDecompressor().decompressobj()
        self.started = False  # the current frame has begun
        self.pending = b""
        self.position = 0

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self, size: int) -> bytes:
        while self.position >= len(self.pending):
            piece = self.source.read(64 * 1024)
            if not piece:
                if self.started:
                    raise EOFError("the last zstd frame ends before its end mark")
                return b""
            self.pending, self.position = b"", 0
            while piece:
                self.started = True
                try:
                    self.pending += self.decoder.decompress(piece)
                except self.zstd.ZstdError as exc:
                    raise OSError(str(exc)) from exc  # corrupt data, as bz2 and gzip report it
                piece = b""
                if self.decoder.eof:  # a frame ended; what follows is the next one
                    piece, self.started = self.decoder.unused_data, False
                    self.decoder = self.zstd.ZstdDecompressor().decompressobj()
        out = self.pending[self.position : self.position + size]
        self.position += len(out)
        return out


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
