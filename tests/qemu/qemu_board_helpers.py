"""Helpers for the QEMU family's tests: real boards from the demo images, built straight from settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images

from pytest_jumpstarter.driver import DeviceContext, Transcript

MakeBoard = Callable[..., QemuBoard]


def board_from(settings: dict[str, Any], workdir: Path, name: str = "qemu_vm") -> QemuBoard:
    """A QemuBoard with settings coerced exactly as the target loader does."""
    typed = QemuBoard.settings_from(settings, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return QemuBoard(
        DeviceContext(name=name, target="test", settings=typed, workdir=workdir, transcript=Transcript())
    )


def linux_settings(images: Images, **more: Any) -> dict[str, Any]:
    return {"kernel": str(images.linux_kernel), "initrd": str(images.linux_initrd), **more}


def uboot_settings(images: Images, **more: Any) -> dict[str, Any]:
    return {"arch": "aarch64", "bios": str(images.uboot_arm64), "shell": "uboot", "memory": "512M", **more}


def qemu_pids(marker: str = "") -> set[int]:
    """PIDs of every qemu-system process on the machine (with ``marker`` in its command line)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("qemu-system") and (not marker or marker.encode() in _cmdline(entry)):
                pids.add(int(entry))
    return pids


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
