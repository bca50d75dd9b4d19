"""driver: jumpstarter's flash: never verified unless every byte read back matches the image.

The fast tests drive :mod:`pytest_jumpstarter_remote.flash` with a flasher client of its own kind
(its ``flash``/``dump`` into files) and the streams that stand in for upstream's files; the last one
corrupts an image on its way to a real exporter and reads it back through that exporter.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from pytest_jumpstarter_remote import JumpstarterBoard
from pytest_jumpstarter_remote.flash import ImageSource, ReadBack

from pytest_jumpstarter import DeviceContext
from pytest_jumpstarter.errors import FlashError

SIZE = 3 * 1024 * 1024 + 123  # more than one compare chunk, not a multiple of one


class FileFlasher:
    """A flasher client that is not upstream's: a disk in memory; ``mangle`` changes what dump returns."""

    def __init__(self, mangle: Any = lambda disk: disk) -> None:
        self.disk = b""
        self.mangle = mangle

    def flash(self, path: str, target: str | None = None) -> None:
        self.disk = Path(path).read_bytes()

    def dump(self, path: str, target: str | None = None) -> None:
        Path(path).write_bytes(self.mangle(self.disk))


def flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.raw"
    path.write_bytes(os.urandom(SIZE))
    return path


def board_with(tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch) -> JumpstarterBoard:
    settings = JumpstarterBoard.settings_from({"exporter": "127.0.0.1:1", "flasher": "qemu.flasher"})
    workdir = tmp_path / "device"
    workdir.mkdir()
    board = JumpstarterBoard(DeviceContext("board", "lab", settings, workdir=workdir))
    board.started = True  # no exporter: the flasher client is the fake
    monkeypatch.setattr(board, "flasher_client", lambda: client)
    return board


def test_a_flash_whose_read_back_matches_is_verified_with_the_images_sha256(tmp_path, image, monkeypatch):
    board = board_with(tmp_path, FileFlasher(), monkeypatch)
    result = board.flash(image)
    assert result.verified and result.image_size == SIZE
    assert result.checksum == "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()
    assert not (board.ctx.workdir / "verify.img").exists()


@pytest.mark.parametrize("offset", [0, 1024 * 1024 + 7, SIZE - 1])
def test_a_read_back_that_differs_is_refused_naming_the_first_differing_byte(
    tmp_path, image, monkeypatch, offset
):
    board = board_with(tmp_path, FileFlasher(lambda disk: flipped(disk, offset)), monkeypatch)
    with pytest.raises(FlashError, match=rf"differs from the image at byte {offset} \(of {SIZE}\)"):
        board.flash(image)


def test_a_short_read_back_is_refused(tmp_path, image, monkeypatch):
    board = board_with(tmp_path, FileFlasher(lambda disk: disk[: SIZE // 2]), monkeypatch)
    with pytest.raises(FlashError, match=rf"read back {SIZE // 2} bytes of {SIZE}: the flash did not land"):
        board.flash(image)


def test_a_read_back_longer_than_the_image_is_compared_on_the_image_only(tmp_path, image, monkeypatch):
    board = board_with(tmp_path, FileFlasher(lambda disk: disk + b"\xff" * 4096), monkeypatch)
    assert board.flash(image).verified


def test_without_verify_nothing_is_read_back(tmp_path, image, monkeypatch):
    board = board_with(tmp_path, FileFlasher(lambda disk: b""), monkeypatch)
    result = board.flash(image, verify=False)
    assert not result.verified
    assert result.checksum == "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()


def stream_back(image: Path, pieces: list[bytes], size: int) -> ReadBack:
    async def feed() -> ReadBack:
        with open(image, "rb") as f:
            back = ReadBack(f.fileno(), size)
            for piece in pieces:
                await back.send(piece)
        return back

    return asyncio.run(feed())


def pieces_of(data: bytes, size: int = 16384) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_the_streamed_read_back_finds_the_first_difference_in_any_piece(image):
    data = image.read_bytes()
    assert stream_back(image, pieces_of(data), SIZE).first_difference is None
    for offset in (0, 16383, 16384, SIZE - 1):
        bad = flipped(flipped(data, offset), SIZE - 1) if offset < SIZE - 1 else flipped(data, offset)
        back = stream_back(image, pieces_of(bad), SIZE)
        assert (back.first_difference, back.received) == (offset, SIZE)


def test_the_streamed_read_back_counts_a_short_dump_and_ignores_what_lies_past_the_image(image):
    data = image.read_bytes()
    short = stream_back(image, pieces_of(data[:1000]), SIZE)
    assert (short.received, short.first_difference) == (1000, None)
    longer = stream_back(image, pieces_of(data + b"\x00" * 50000), SIZE)
    assert (longer.received, longer.first_difference) == (SIZE + 50000, None)


def test_the_image_source_sends_the_image_in_order_and_ends(image):
    async def drain() -> bytes:
        with open(image, "rb") as f:
            source = ImageSource(f.fileno(), SIZE)
            return b"".join([piece async for piece in source])

    assert asyncio.run(drain()) == image.read_bytes()


@pytest.mark.qemu
def test_an_image_corrupted_on_its_way_to_a_real_exporter_is_refused(
    tmp_path, image, demo_exporter, monkeypatch
):
    """The streamed path end to end: one byte flipped in what is sent; the exporter's dump shows it."""
    from pytest_jumpstarter_remote.flash import _upstream

    settings = JumpstarterBoard.settings_from(
        {"exporter": demo_exporter.listen, "insecure": True, "flasher": "qemu.flasher", "autostart": False}
    )
    board = JumpstarterBoard(DeviceContext("board", "lab", settings, workdir=tmp_path))
    board.start()
    try:
        client = board.flasher_client()
        assert _upstream(client, "flash") and _upstream(client, "dump")  # the QEMU flasher is upstream's
        assert board.flash(image).verified
        offset = SIZE - 5
        plain = ImageSource.receive

        async def corrupting(self: ImageSource) -> bytes:
            start = self.sent
            data = await plain(self)
            if start <= offset < start + len(data):
                data = flipped(data, offset - start)
            return data

        monkeypatch.setattr(ImageSource, "receive", corrupting)
        with pytest.raises(FlashError, match=rf"differs from the image at byte {offset} \(of {SIZE}\)"):
            board.flash(image)
    finally:
        board.stop()
