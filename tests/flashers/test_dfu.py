"""The ``dfu`` method against the software DFU 1.1 device behind pyusb's backend interface."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import pytest
from pytest_jumpstarter_flashers.dfu import DfuFlasher
from pytest_jumpstarter_flashers.testing.dfu_sim import (
    ABORT,
    DETACH,
    DNLOAD,
    DNLOAD_IDLE,
    GETSTATUS,
    SimulatedDfuBackend,
    SimulatedDfuDevice,
)

from pytest_jumpstarter.errors import FlashError

from .conftest import MIB, context, make_image


def dfu_flasher(tmp_path: Path, device: SimulatedDfuDevice, **settings: Any) -> DfuFlasher:
    ctx = context("dfu", DfuFlasher, settings, tmp_path)
    ctx.extra["usb_backend"] = SimulatedDfuBackend(device)
    flasher = DfuFlasher(ctx)
    flasher.start()
    return flasher


@pytest.fixture
def image(tmp_path: Path, marker: bytes) -> tuple[Path, bytes]:
    path = tmp_path / "firmware.bin"
    data = make_image(path, 300 * 1024 + 17, {0: os.urandom(1000), 200 * 1024: marker})
    return path, data


def test_flash_downloads_manifests_and_verifies_by_upload(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, data = image
    device = SimulatedDfuDevice(alt_names=("bootloader", "rootfs"), size=MIB, busy_ms=1, manifest_ms=5)
    result = dfu_flasher(tmp_path, device).flash(path, target="rootfs")
    assert result.verified and result.method == "dfu" and result.target == "rootfs"
    assert result.bytes_written == len(data)  # DFU addresses blocks by number: zeros are sent too
    assert bytes(device.storage[1][: len(data)]) == data
    assert device.image_length[1] == len(data) and device.image_length[0] == 0
    assert device.state == 2  # dfuIDLE: left clean
    # The device asked for 1 ms per block; a GETSTATUS before that would have been stalled.
    assert sum(1 for r, _ in device.requests if r == GETSTATUS) > len(data) // device.transfer_size


@pytest.mark.parametrize("will_detach", [True, False], ids=["detaches-itself", "needs-usb-reset"])
def test_runtime_device_is_detached_into_dfu_mode(
    tmp_path: Path, image: tuple[Path, bytes], will_detach: bool
) -> None:
    path, data = image
    device = SimulatedDfuDevice(runtime=True, will_detach=will_detach)
    flasher = dfu_flasher(tmp_path, device)
    assert flasher.flash(path).verified
    assert device.requests[0] == (DETACH, 1000)
    assert bytes(device.storage[0][: len(data)]) == data


def test_device_not_manifestation_tolerant_is_reset_after_download(
    tmp_path: Path, image: tuple[Path, bytes]
) -> None:
    path, data = image
    device = SimulatedDfuDevice(manifestation_tolerant=False, manifest_ms=2)
    assert dfu_flasher(tmp_path, device).flash(path).verified
    assert bytes(device.storage[0][: len(data)]) == data


def test_write_error_reported_by_device_names_block_and_status(
    tmp_path: Path, image: tuple[Path, bytes]
) -> None:
    path, _ = image
    device = SimulatedDfuDevice()
    device.faults.write_error_at_block = 5
    flasher = dfu_flasher(tmp_path, device)
    with pytest.raises(FlashError) as info:
        flasher.flash(path)
    message = str(info.value)
    assert "dfu flash of flash: block 5 (offset 20480, 4096 bytes)" in message
    assert (
        "expected status OK, state dfuDNLOAD-IDLE; device reported status errWRITE, state dfuERROR" in message
    )
    assert device.state == 2  # CLRSTATUS brought it back to dfuIDLE
    assert flasher.flash(path).verified  # and the next flash works


def test_stalled_download_is_explained_by_getstatus(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    device = SimulatedDfuDevice()
    device.faults.stall_at_block = 3
    with pytest.raises(
        FlashError,
        match=r"DFU_DNLOAD of block 3 .*stalled the request \(pipe error\); then "
        r"status errSTALLEDPKT, state dfuERROR",
    ):
        dfu_flasher(tmp_path, device).flash(path)
    assert device.state == 2


def test_truncated_status_reply_is_a_flash_error(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    device = SimulatedDfuDevice()
    device.faults.bad_status_at_block = 7
    with pytest.raises(FlashError, match=r"block 7 .*bad GETSTATUS reply: expected 6 bytes, got 3"):
        dfu_flasher(tmp_path, device).flash(path)


def test_device_vanishing_mid_transfer_is_named(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    device = SimulatedDfuDevice()
    device.faults.vanish_at_block = 10
    with pytest.raises(FlashError, match=r"DFU_DNLOAD of block 10 \(offset 40960.*vanished from the bus"):
        dfu_flasher(tmp_path, device).flash(path)


def test_manifestation_failure_errverify(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    device = SimulatedDfuDevice()
    device.faults.manifest_error = True
    with pytest.raises(
        FlashError, match=r"manifestation after 307217 bytes: .*status errVERIFY, state dfuERROR"
    ):
        dfu_flasher(tmp_path, device).flash(path)


def test_silent_corruption_is_caught_by_upload_verify(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    device = SimulatedDfuDevice()
    device.faults.corrupt_offset = 200 * 1024 + 3
    with pytest.raises(
        FlashError, match=r"verify: block 0 \(offset 0, 307217 bytes\) differs: expected CRC32"
    ):
        dfu_flasher(tmp_path, device).flash(path)


def test_image_larger_than_device_fails_with_erraddress(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(80 * 1024))
    device = SimulatedDfuDevice(size=64 * 1024)
    with pytest.raises(FlashError, match=r"block 16 \(offset 65536.*errADDRESS"):
        dfu_flasher(tmp_path, device).flash(path)


def test_device_without_upload_refuses_to_claim_verification(
    tmp_path: Path, image: tuple[Path, bytes]
) -> None:
    path, data = image
    device = SimulatedDfuDevice(can_upload=False)
    flasher = dfu_flasher(tmp_path, device)
    with pytest.raises(FlashError, match=r"cannot verify: .*bitCanUpload is 0"):
        flasher.flash(path)
    result = flasher.flash(path, verify=False)
    assert not result.verified
    assert bytes(device.storage[0][: len(data)]) == data


def test_dump_uploads_the_stored_image(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, data = image
    device = SimulatedDfuDevice()
    flasher = dfu_flasher(tmp_path, device)
    flasher.flash(path, verify=False)
    assert flasher.dump("flash", tmp_path / "back.bin", len(data)) == len(data)
    assert (tmp_path / "back.bin").read_bytes() == data


def test_missing_device_fails_at_start(tmp_path: Path) -> None:
    device = SimulatedDfuDevice()
    device.attached = False
    with pytest.raises(Exception, match=r"no USB device matches idVendor 0x1209"):
        dfu_flasher(tmp_path, device, vendor_id=0x1209, find_timeout=0.1)


def test_simulated_backend_from_the_target_description(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, data = image
    flasher = DfuFlasher(
        context(
            "dfu",
            DfuFlasher,
            {"backend": "simulated", "simulated_size": MIB, "simulated_alts": ["a", "b"]},
            tmp_path,
        )
    )
    flasher.start()
    result = flasher.flash({"a": path, "b": path})
    assert set(result) == {"a", "b"}
    assert bytes(flasher.simulator.storage[1][: len(data)]) == data
    assert DNLOAD in {r for r, _ in flasher.simulator.requests}


def test_poll_timeout_is_honoured_and_a_host_that_ignores_it_is_stalled(
    tmp_path: Path, image: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = image
    device = SimulatedDfuDevice(busy_ms=20)
    flasher = dfu_flasher(tmp_path, device)
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(3 * 4096))
    assert flasher.flash(small).verified  # 3 blocks, each waited for
    import pytest_jumpstarter_flashers.dfu as dfu_module

    monkeypatch.setattr(dfu_module.time, "sleep", lambda seconds: None)  # a host in a hurry
    with pytest.raises(FlashError, match=r"block 0 .*stalled the request \(pipe error\)"):
        flasher.flash(path)


def test_transfer_left_half_done_is_aborted_before_the_next_flash(
    tmp_path: Path, image: tuple[Path, bytes]
) -> None:
    path, data = image
    device = SimulatedDfuDevice()
    flasher = dfu_flasher(tmp_path, device)
    device.state = DNLOAD_IDLE  # an earlier host died between two blocks
    assert flasher.flash(path).verified
    assert (ABORT, 0) in device.requests
    assert bytes(device.storage[0][: len(data)]) == data


def test_truncated_image_aborts_the_download(tmp_path: Path) -> None:
    packed = gzip.compress(os.urandom(3 * MIB), 1)
    path = tmp_path / "firmware.bin.gz"
    path.write_bytes(packed[: len(packed) // 2])
    device = SimulatedDfuDevice()
    with pytest.raises(FlashError, match=r"dfu flash of flash: .*gzip stream ends early"):
        dfu_flasher(tmp_path, device).flash(path)
    assert (ABORT, 0) in device.requests
    assert device.state == 2 and device.image_length[0] == 0  # nothing half-written was manifested


def test_block_numbers_wrap_past_65535(tmp_path: Path) -> None:
    path = tmp_path / "firmware.bin"
    data = os.urandom(65536 * 64 + 640)  # 65546 blocks of wTransferSize 64
    path.write_bytes(data)
    device = SimulatedDfuDevice(size=8 * MIB, transfer_size=64)
    assert dfu_flasher(tmp_path, device).flash(path).verified
    assert bytes(device.storage[0][: len(data)]) == data
    numbers = [value for request, value in device.requests if request == DNLOAD]
    assert numbers[65535:65538] == [65535, 0, 1]
