"""The plugin's flasher contract on top of a Jumpstarter flasher: write, read back, compare.

A compressed image is decompressed here first (the image pipeline of the flashers family), so the
exporter gets exactly the bytes that must land and the comparison has a reference.  A flash is
reported as a success only after ``dump`` read the same bytes back, compared byte for byte with
the image; with ``verify=False`` the result says ``verified=False``.

Where the flasher client is upstream's ``FlasherClient`` (its ``flash``/``dump`` of a local file are
a resource stream plus the driver's ``flash``/``dump`` call), our own streams stand in for its files:
:class:`ImageSource` sends the image in 256 KiB messages (upstream: 64 KiB, each read on a worker
thread) and :class:`ReadBack` compares the dump as it arrives (upstream: a file, written 16 KiB at a
time on a worker thread, that we would then read again).  Any other flasher client gets its own
``flash`` and ``dump`` into a file.  The image's sha256 (the result's checksum) is computed on a worker
thread meanwhile; hashlib releases the GIL on large buffers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anyio import EndOfStream
from anyio.abc import ObjectStream

from pytest_jumpstarter.capabilities import FlashResult
from pytest_jumpstarter.errors import FlashError
from pytest_jumpstarter.workfiles import file_sha256

if TYPE_CHECKING:
    from .driver import JumpstarterBoard

_CHUNK = 1024 * 1024
#: Bytes per message of an image sent to the exporter: per-message costs dominate at 64 KiB, and a
#: gRPC message may have 4 MiB.
_SEND = 256 * 1024
_COMPRESSED = (".gz", ".xz", ".bz2", ".zst")


def _raw_image(image: Any, workdir: Path) -> tuple[Path, bool]:
    """A local file with the image's content (decompressed); True when it is a temporary copy."""
    text = str(image)
    if not text.startswith(("http://", "https://")) and not text.endswith(_COMPRESSED):
        return Path(text), False
    from pytest_jumpstarter_flashers.image import open_image

    fd, name = tempfile.mkstemp(prefix="image-", suffix=".raw", dir=workdir)
    with os.fdopen(fd, "wb") as out, open_image(text) as opened:
        for block in opened.blocks():
            out.write(block.content())
    return Path(name), True


def _first_difference(a: Path, b: Path, size: int) -> int | None:
    """Where the first ``size`` bytes of ``a`` and ``b`` first differ (or one of them ends), or None."""
    x, y = bytearray(_CHUNK), bytearray(_CHUNK)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while offset < size:
            want = min(_CHUNK, size - offset)
            n, m = fa.readinto(memoryview(x)[:want]), fb.readinto(memoryview(y)[:want])
            if n == m == want and (x == y if want == _CHUNK else x[:want] == y[:want]):
                offset += want
                continue
            return offset + _first_in(x[:n], y[:m])
    return None


def _first_in(got: bytes | bytearray, expected: bytes | bytearray) -> int:
    """The index of the first difference of two pieces known to differ (the shorter one's end)."""
    return next(
        (i for i in range(min(len(got), len(expected))) if got[i] != expected[i]),
        min(len(got), len(expected)),
    )


def flash(board: JumpstarterBoard, image: Any, target: str | None, verify: bool) -> FlashResult:
    if not str(image).startswith(("http://", "https://")) and not Path(str(image)).is_file():
        raise FlashError(board.device_name, f"flash(): image {str(image)!r} is not a file")
    client = board.flasher_client()
    where = target or "default"
    began = time.monotonic()
    raw, temporary = _raw_image(image, board.ctx.workdir)
    try:
        size = raw.stat().st_size
        # Leaving the pool waits for the hash, also when the flash failed: no thread outlives the call.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flash-sha256") as pool:
            digest = pool.submit(file_sha256, raw)
            _call(
                board,
                f"flashing {size} bytes to {where} with {board.config.flasher}",
                lambda: _write(board, client, raw, size, target),
            )
            if verify:
                _verify(board, client, raw, size, target)
            checksum = "sha256:" + digest.result()
        return FlashResult(
            method=f"jumpstarter {board.config.flasher}",
            target=where,
            bytes_written=size,
            image_size=size,
            duration=time.monotonic() - began,
            checksum=checksum,
            verified=verify,
        )
    finally:
        if temporary:
            raw.unlink(missing_ok=True)


def _write(board: JumpstarterBoard, client: Any, raw: Path, size: int, target: str | None) -> None:
    if not _upstream(client, "flash"):
        client.flash(str(raw), target=target)
        return
    with open(raw, "rb") as image:
        board.session.portal.call(_through, client, "flash", ImageSource(image.fileno(), size), target)


def _verify(board: JumpstarterBoard, client: Any, raw: Path, size: int, target: str | None) -> None:
    """Read ``target`` back and compare it with the image; FlashError unless every byte matches."""
    where = target or "default"
    if _upstream(client, "dump"):
        with open(raw, "rb") as image:
            back = ReadBack(image.fileno(), size)
            _call(
                board,
                f"reading back {where}",
                lambda: board.session.portal.call(_through, client, "dump", back, target),
            )
        got, offset = back.received, back.first_difference
    else:
        path = board.ctx.workdir / "verify.img"
        try:
            _dump(board, client, target, path)
            got = path.stat().st_size
            offset = _first_difference(raw, path, size) if got >= size else None
        finally:
            path.unlink(missing_ok=True)
    if got < size:
        raise FlashError(
            board.device_name, f"verify: {where} read back {got} bytes of {size}: the flash did not land"
        )
    if offset is not None:
        raise FlashError(
            board.device_name,
            f"verify: {where} differs from the image at byte {offset} (of {size}); "
            "the flash is not trustworthy",
        )


def _upstream(client: Any, method: str) -> bool:
    """Whether ``client.<method>`` of a local file is upstream ``FlasherClient``'s: a resource stream and
    the driver's call of that name (QEMU's ``flash`` adds only ``oci://`` images, which we never send)."""
    from jumpstarter.client import FlasherClient

    if not isinstance(client, FlasherClient):
        return False
    cls = type(client)
    if method == "dump":
        return cls.dump is FlasherClient.dump
    delegating: set[object] = {FlasherClient.flash}
    try:
        from jumpstarter_driver_qemu.client import QemuFlasherClient

        delegating.add(QemuFlasherClient.flash)
    except ImportError:
        pass
    return cls._flash_single is FlasherClient._flash_single and cls.flash in delegating


async def _through(client: Any, method: str, stream: ObjectStream[bytes], target: str | None) -> None:
    """The driver's ``method`` (flash or dump) with ``stream`` as its resource."""
    async with client.resource_async(stream) as handle:
        await client.call_async(method, handle, target)


class ImageSource(ObjectStream[bytes]):
    """The first ``size`` bytes of the file open as descriptor ``image``, ``pread`` in ``_SEND`` pieces."""

    def __init__(self, image: int, size: int) -> None:
        self._image = image
        self._size = size
        self.sent = 0

    async def receive(self) -> bytes:
        data = (
            os.pread(self._image, min(_SEND, self._size - self.sent), self.sent)
            if self.sent < self._size
            else b""
        )
        if not data:
            raise EndOfStream  # a file that shrank meanwhile is short: the read-back says so
        self.sent += len(data)
        return data

    async def send(self, item: bytes) -> None:
        pass  # nothing comes back on a flash's resource

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class ReadBack(ObjectStream[bytes]):
    """A dump's receiving end: compares each piece with the image (open as the descriptor ``image``) at
    its offset, and keeps only the count and the first difference; nothing is written."""

    def __init__(self, image: int, size: int) -> None:
        self._image = image
        self._size = size
        self.received = 0
        self.first_difference: int | None = None

    async def send(self, item: bytes) -> None:
        offset = self.received
        self.received += len(item)
        if self.first_difference is not None or offset >= self._size:
            return  # already known to differ, or past the image (a partition larger than it)
        got = item[: self._size - offset]  # the whole item (no copy) unless it runs past the image
        expected = os.pread(self._image, len(got), offset)
        if got != expected:
            self.first_difference = offset + _first_in(got, expected)

    async def receive(self) -> bytes:
        raise EndOfStream  # nothing goes to the exporter

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _call(board: JumpstarterBoard, what: str, func: Any) -> None:
    """``func()``; a failure is the lost lease if there is one, else a FlashError saying ``what`` failed."""
    try:
        func()
    except Exception as exc:
        if board.lost is not None:
            raise board.lost from exc
        raise FlashError(board.device_name, f"{what}: {exc}") from exc


def _dump(board: JumpstarterBoard, client: Any, target: str | None, path: Path) -> None:
    _call(board, f"reading back {target or 'default'}", lambda: client.dump(str(path), target=target))


def dump(board: JumpstarterBoard, target: str, path: Path, size: int) -> int:
    """Read ``size`` bytes of ``target`` into ``path``."""
    client = board.flasher_client()
    partition = None if target == "default" else target
    tmp = board.ctx.workdir / "dump.img"
    try:
        _dump(board, client, partition, tmp)
        got = tmp.stat().st_size
        if got < size:
            raise FlashError(board.device_name, f"dump: {target} has {got} bytes, {size} were asked for")
        with open(tmp, "rb") as src, open(path, "wb") as dst:
            left = size
            while left:
                chunk = src.read(min(_CHUNK, left))
                dst.write(chunk)
                left -= len(chunk)
        return size
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(tmp.with_suffix(".d"), ignore_errors=True)
