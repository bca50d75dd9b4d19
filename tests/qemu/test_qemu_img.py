"""The one qemu-img helper (boards' overlays and the qemu-disk flasher's conversions): real qemu-img, no QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_jumpstarter_qemu import qemu_img

from pytest_jumpstarter.errors import CommandFailed, CommandNotFound


def test_an_overlay_has_its_base_size_and_converts_back_to_the_base_bytes(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"jumpstarter" * 1000 + bytes(1024 * 1024 - 11000))
    overlay = tmp_path / "overlay.qcow2"
    qemu_img.create_qcow2("vm", overlay, backing=base, backing_format="raw", failure="no overlay")
    assert qemu_img.virtual_size("vm", overlay, "qcow2") == base.stat().st_size
    qemu_img.convert_to_raw("vm", overlay, "qcow2", tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == base.read_bytes()


def test_a_failure_says_what_was_being_made_and_what_qemu_img_said(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match=r"^device 'vm': no overlay on nothing: .*No such file") as info:
        qemu_img.create_qcow2(
            "vm", tmp_path / "o.qcow2", backing=tmp_path / "missing.raw", failure="no overlay on nothing"
        )
    assert info.value.returncode == 1


def test_a_missing_qemu_img_is_a_clear_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CommandNotFound, match=r"'qemu-img' is not installed .*apt-get install qemu-utils"):
        qemu_img.create_qcow2("vm", tmp_path / "o.qcow2", size="1M", failure="state drive")
