"""The plugin's flasher contract on top of a Jumpstarter flasher: write, read back, compare.

A compressed image is decompressed here first (the image pipeline of the flashers family), so the
exporter gets exactly the bytes that must land and the comparison has a reference.  A flash is
reported as a success only after ``dump`` read the same bytes back; with ``verify=False`` the
result says ``verified=False``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_jumpstarter.capabilities import FlashResult
from pytest_jumpstarter.errors import FlashError
from pytest_jumpstarter.workfiles import file_sha256

if TYPE_CHECKING:
    from .driver import JumpstarterBoard

_CHUNK = 1024 * 1024
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
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while offset < size:
            x, y = fa.read(min(_CHUNK, size - offset)), fb.read(min(_CHUNK, size - offset))
            if x != y:
                for i, (p, q) in enumerate(zip(x, y, strict=False)):
                    if p != q:
                        return offset + i
                return offset + min(len(x), len(y))
            offset += len(x)
    return None


def flash(board: JumpstarterBoard, image: Any, target: str | None, verify: bool) -> FlashResult:
    if not str(image).startswith(("http://", "https://")) and not Path(str(image)).is_file():
        raise FlashError(board.device_name, f"flash(): image {str(image)!r} is not a file")
    client = board.flasher_client()
    where = target or "default"
    began = time.monotonic()
    raw, temporary = _raw_image(image, board.ctx.workdir)
    try:
        size = raw.stat().st_size
        try:
            client.flash(str(raw), target=target)
        except Exception as exc:
            if board.lost is not None:
                raise board.lost from exc
            raise FlashError(
                board.device_name, f"flashing {size} bytes to {where} with {board.config.flasher}: {exc}"
            ) from exc
        checksum = "sha256:" + file_sha256(raw)
        if verify:
            back = board.ctx.workdir / "verify.img"
            try:
                _dump(board, client, target, back)
                got = back.stat().st_size
                if got < size:
                    raise FlashError(
                        board.device_name,
                        f"verify: {where} read back {got} bytes of {size}: the flash did not land",
                    )
                if "sha256:" + file_sha256(back, size) != checksum:
                    offset = _first_difference(raw, back, size)
                    raise FlashError(
                        board.device_name,
                        f"verify: {where} differs from the image at byte {offset} (of {size}); "
                        "the flash is not trustworthy",
                    )
            finally:
                back.unlink(missing_ok=True)
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


def _dump(board: JumpstarterBoard, client: Any, target: str | None, path: Path) -> None:
    try:
        client.dump(str(path), target=target)
    except Exception as exc:
        if board.lost is not None:
            raise board.lost from exc
        raise FlashError(board.device_name, f"reading back {target or 'default'}: {exc}") from exc


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
