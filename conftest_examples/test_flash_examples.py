"""Example flashing tests: they run on every target that has a ``flasher`` device.

pytest conftest_examples --target=conftest_examples/dfu-simulated.yaml
pytest conftest_examples --target=conftest_examples/qemu-arm64-uboot.yaml
"""

from __future__ import annotations

import gzip
import os


def test_flash_verifies_and_reads_back(flasher, tmp_path):
    image = tmp_path / "firmware.img"
    data = b"example-marker" + os.urandom(512 * 1024) + bytes(1024 * 1024) + b"tail"
    image.write_bytes(data)
    result = flasher.flash(image)
    assert result.verified
    assert result.image_size == len(data)
    print(f"{result.method}: {result.mib_per_s:.1f} MiB/s, {result.checksum}")
    back = tmp_path / "back.img"
    flasher.dump(result.target, back, len(data))
    assert back.read_bytes() == data


def test_compressed_image_is_flashed_as_its_content(flasher, tmp_path):
    data = os.urandom(256 * 1024)
    image = tmp_path / "firmware.img.gz"
    image.write_bytes(gzip.compress(data, 1))
    assert flasher.flash(image).image_size == len(data)
