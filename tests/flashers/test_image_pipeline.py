"""The image pipeline and the ``block`` method: sparse files, compression, URLs, verification."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from pytest_jumpstarter_flashers import base
from pytest_jumpstarter_flashers.block import BlockFlasher
from pytest_jumpstarter_flashers.progress import Progress

from pytest_jumpstarter.errors import FlashError
from pytest_jumpstarter.settings import SettingValueError

from .conftest import MIB, HttpServer, context, make_image


def block_flasher(tmp_path: Path, target: Path, **settings: object) -> BlockFlasher:
    flasher = BlockFlasher(
        context("sdmux", BlockFlasher, {"path": target, "create": True, **settings}, tmp_path)
    )
    flasher.start()
    return flasher


def test_holes_and_zero_blocks_are_not_written_but_read_back_as_zeros(tmp_path: Path, marker: bytes) -> None:
    image = tmp_path / "disk.img"
    # A hole at 0-3 MiB, the marker at 3 MiB, allocated zeros at 5 MiB, more data near the end.
    expected = make_image(image, 8 * MIB, {3 * MIB: marker, 7 * MIB + 5: b"tail"})
    with open(image, "r+b") as f:
        f.seek(5 * MIB)
        f.write(bytes(MIB))
    target = tmp_path / "sd.img"
    target.write_bytes(b"\xff" * 9 * MIB)  # old content longer than the image must not survive
    result = block_flasher(tmp_path, target).flash(image)
    assert result.verified
    assert result.bytes_written == 2 * MIB
    assert result.image_size == 8 * MIB
    assert result.checksum == f"crc32:{zlib.crc32(expected):08x}"
    assert target.read_bytes() == expected
    assert os.stat(target).st_blocks * 512 <= 2 * MIB + 64 * 1024  # the rest stayed holes


def compress(suffix: str, data: bytes) -> bytes:
    if suffix == ".gz":
        return gzip.compress(data, 1)
    if suffix == ".xz":
        return lzma.compress(data, preset=0)
    if suffix == ".bz2":
        return bz2.compress(data, 1)
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(data)


SUFFIXES = [".gz", ".xz", ".bz2", ".zst"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_compressed_images_are_decompressed_as_a_stream(tmp_path: Path, marker: bytes, suffix: str) -> None:
    raw = bytes(2 * MIB) + marker + os.urandom(3 * MIB) + bytes(100)
    image = tmp_path / f"disk.img{suffix}"
    # Two members or frames, as `cat a.gz b.gz` makes: one image.
    image.write_bytes(compress(suffix, raw[:MIB]) + compress(suffix, raw[MIB:]))
    target = tmp_path / "sd.img"
    result = block_flasher(tmp_path, target, checksum="sha256").flash(image)
    assert target.read_bytes() == raw
    assert result.image_size == len(raw)
    assert result.checksum == "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("cut", ["in the first member", "in the second member"])
def test_truncated_compressed_image_fails_naming_where_it_ends(tmp_path: Path, suffix: str, cut: str) -> None:
    first, second = compress(suffix, os.urandom(MIB)), compress(suffix, os.urandom(2 * MIB))
    packed = first[: len(first) // 2] if cut == "in the first member" else first + second[:-40]
    image = tmp_path / f"disk.img{suffix}"
    image.write_bytes(packed)
    with pytest.raises(FlashError) as info:
        block_flasher(tmp_path, tmp_path / "sd.img").flash(image)
    message = str(info.value)
    assert "block flash of disk" in message
    assert str(image) in message
    assert "truncated" in message
    assert "bytes of output" in message


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_corrupt_compressed_image_fails_naming_the_image(tmp_path: Path, suffix: str) -> None:
    packed = bytearray(compress(suffix, bytes(range(256)) * 8192))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = os.urandom(64)
    image = tmp_path / f"disk.img{suffix}"
    image.write_bytes(bytes(packed))
    with pytest.raises(FlashError, match=rf"(?s)block flash of disk.*{image}.*(corrupt|ends early)"):
        block_flasher(tmp_path, tmp_path / "sd.img").flash(image)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_compressed_file_is_not_an_empty_image(tmp_path: Path, suffix: str) -> None:
    image = tmp_path / f"disk.img{suffix}"
    image.write_bytes(b"")
    with pytest.raises(FlashError, match=r"the file is empty, not \w+ data|ends early after 0 bytes"):
        block_flasher(tmp_path, tmp_path / "sd.img").flash(image)


def test_truncated_compressed_download_is_a_flash_error(tmp_path: Path, http_server: HttpServer) -> None:
    (http_server.root / "disk.img.xz").write_bytes(compress(".xz", os.urandom(3 * MIB)))
    http_server.truncate("disk.img.xz", MIB)
    with pytest.raises(FlashError, match=r"(?s)block flash of disk.*truncated download"):
        block_flasher(tmp_path, tmp_path / "sd.img").flash(http_server.url("disk.img.xz"))


def test_image_from_http_url_is_streamed(tmp_path: Path, http_server: HttpServer, marker: bytes) -> None:
    raw = os.urandom(MIB) + bytes(2 * MIB) + marker
    (http_server.root / "disk.img.gz").write_bytes(gzip.compress(raw, 1))
    (http_server.root / "plain.img").write_bytes(raw)
    target = tmp_path / "sd.img"
    flasher = block_flasher(tmp_path, target)
    assert flasher.flash(http_server.url("disk.img.gz")).image_size == len(raw)
    assert target.read_bytes() == raw
    assert flasher.flash(http_server.url("plain.img")).bytes_written == MIB + len(marker)  # zeros skipped
    assert target.read_bytes() == raw


def test_http_body_shorter_than_announced_is_a_flash_error(tmp_path: Path, http_server: HttpServer) -> None:
    (http_server.root / "plain.img").write_bytes(os.urandom(3 * MIB))
    http_server.truncate("plain.img", 2 * MIB + 10)
    with pytest.raises(FlashError, match=r"(?s)block flash of disk.*truncated download"):
        block_flasher(tmp_path, tmp_path / "sd.img").flash(http_server.url("plain.img"))


def test_missing_url_names_the_http_status(tmp_path: Path, http_server: HttpServer) -> None:
    with pytest.raises(FlashError, match=r"HTTP 404"):
        block_flasher(tmp_path, tmp_path / "sd.img").flash(http_server.url("nope.img"))


def test_byte_flipped_on_its_way_to_storage_fails_verification(
    tmp_path: Path, marker: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "disk.img"
    make_image(image, 4 * MIB, {2 * MIB + 100: marker})
    real = base._pwrite_all

    def flipping(flasher: base.FlasherDriver, dest: base.Destination, fd: int, data: bytes, pos: int) -> None:
        if pos == 2 * MIB:
            data = data[:100] + bytes([data[100] ^ 0x01]) + data[101:]
        real(flasher, dest, fd, data, pos)

    monkeypatch.setattr(base, "_pwrite_all", flipping)
    with pytest.raises(FlashError) as info:
        block_flasher(tmp_path, tmp_path / "sd.img").flash(image)
    message = str(info.value)
    assert "block flash of disk: verify: block 2 (offset 2097152" in message
    assert "expected CRC32" in message and "found" in message


def test_unverified_flash_says_so(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    make_image(image, MIB, {0: b"x"})
    assert not block_flasher(tmp_path, tmp_path / "sd.img").flash(image, verify=False).verified


def test_partition_mapping_writes_each_image_at_its_offset(tmp_path: Path) -> None:
    boot, rootfs = tmp_path / "boot.img", tmp_path / "rootfs.img"
    boot.write_bytes(b"B" * 1000)
    rootfs.write_bytes(b"R" * (MIB + 3))
    target = tmp_path / "sd.img"
    target.write_bytes(b"\xee" * 4 * MIB)
    flasher = block_flasher(tmp_path, target, partitions={"boot": "512K+1M", "rootfs": "disk:2M"})
    results = flasher.flash({"boot": boot, "rootfs": rootfs})
    assert set(results) == {"boot", "rootfs"}
    assert results["rootfs"].target == "rootfs" and results["rootfs"].verified
    data = target.read_bytes()
    assert data[: 512 * 1024] == b"\xee" * 512 * 1024  # outside the partitions: untouched
    assert data[512 * 1024 : 512 * 1024 + 1000] == b"B" * 1000
    assert data[2 * MIB : 3 * MIB + 3] == b"R" * (MIB + 3)
    dumped = tmp_path / "dump.bin"
    assert flasher.dump("rootfs", dumped, MIB + 3) == MIB + 3
    assert dumped.read_bytes() == b"R" * (MIB + 3)


def test_image_larger_than_its_partition_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    image.write_bytes(b"x" * (2 * MIB))
    flasher = block_flasher(tmp_path, tmp_path / "sd.img", partitions={"boot": "1M+1M"})
    with pytest.raises(FlashError, match=r"does not fit.*partition holds 1048576 bytes"):
        flasher.flash(image, target="boot")


def test_unknown_target_lists_what_exists(tmp_path: Path) -> None:
    flasher = block_flasher(tmp_path, tmp_path / "sd.img", partitions={"boot": "1M"})
    with pytest.raises(FlashError, match=r"no storage or partition named 'rootfs'; known: 'disk', 'boot'"):
        flasher.flash(tmp_path / "x.img", target="rootfs")


def test_partitions_are_read_in_their_short_and_long_forms(tmp_path: Path) -> None:
    settings = BlockFlasher.settings_from(
        {"path": "sd.img", "partitions": {"a": "disk:1M+64M", "b": 4096, "c": {"offset": "2M"}}}, tmp_path
    )
    assert settings.partitions == {
        "a": base.Partition(storage="disk", offset=MIB, size=64 * MIB),
        "b": base.Partition(offset=4096),
        "c": base.Partition(offset=2 * MIB),
    }
    assert settings.path == tmp_path / "sd.img"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("disk:lots", "partitions: boot: offset: expected a size such as 256M or 1G, found string 'lots'"),
        ("1M+", "partitions: boot: expected '[STORAGE:]OFFSET[+SIZE]' such as 'disk:1M+64M'"),
        ({"ofset": "1M"}, "partitions: boot: ofset: unknown key 'ofset'; did you mean 'offset'?"),
    ],
)
def test_a_bad_partition_names_itself(spec: object, message: str) -> None:
    with pytest.raises(SettingValueError) as info:
        BlockFlasher.settings_from({"path": "/dev/null", "partitions": {"boot": spec}})
    assert str(info.value).startswith(message)


def test_progress_is_rate_limited() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = Progress(lines.append, "flasher", 100 * MIB, interval=5.0, clock=lambda: now[0])
    for step in range(1, 1001):  # 100 MiB in 10 s, 1000 updates
        now[0] = step / 100
        progress.update(step * MIB // 10)
    progress.finish(100 * MIB)
    assert 5 <= len(lines) <= 11
    assert "MiB/s" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("flasher: done, 100.0 MiB")


def test_short_flash_prints_no_progress() -> None:
    lines: list[str] = []
    progress = Progress(lines.append, "flasher", MIB)
    progress.update(MIB)
    progress.finish(MIB)
    assert lines == []


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A real block device: a loop device over an 8 MiB file full of 0xee (skips without losetup)."""
    backing = tmp_path / "backing.img"
    backing.write_bytes(b"\xee" * 8 * MIB)
    if shutil.which("losetup") is None:
        pytest.skip("no losetup")
    made = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a loop device here: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", str(device)], check=True)


def test_block_device_gets_zeroes_for_zero_blocks_and_is_read_back(
    tmp_path: Path, loop_device: Path, marker: bytes
) -> None:
    image = tmp_path / "disk.img"
    expected = make_image(image, 6 * MIB, {0: marker, 5 * MIB: marker})
    result = block_flasher(tmp_path, loop_device, create=False).flash(image)
    assert result.verified
    with open(loop_device, "rb") as device:
        on_device = device.read(8 * MIB)
    assert on_device[: len(expected)] == expected  # the old 0xee under the zero blocks is gone
    assert on_device[len(expected) :] == b"\xee" * 2 * MIB  # past the image: untouched


def test_every_method_is_a_flash_capability() -> None:
    from pytest_jumpstarter_flashers import (
        BlockFlasher,
        DfuFlasher,
        QemuDiskFlasher,
        UBootTftpFlasher,
        pytest_jumpstarter_add_drivers,
    )

    from pytest_jumpstarter.capabilities import Flash

    methods = [ref.load() for ref in pytest_jumpstarter_add_drivers()]
    assert {m.name for m in methods} == {"block", "dfu", "qemu-disk", "uboot-tftp"}
    assert {m.role for m in methods} == {"flasher"}
    for cls in (BlockFlasher, DfuFlasher, QemuDiskFlasher, UBootTftpFlasher):
        assert issubclass(cls, Flash)
