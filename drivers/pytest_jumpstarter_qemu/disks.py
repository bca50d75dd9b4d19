"""A QEMU board's virtio disks: what the settings say, and the per-run files the VM really uses.

Base images are never written: a file becomes a per-run qcow2 overlay in the device's workdir, a
size a blank sparse raw file.  ``set_disk`` (the qemu-disk flasher) swaps in another file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pytest_jumpstarter.errors import DeviceStateError, DriverError
from pytest_jumpstarter.settings import SettingValueError, setting

from .qemu_img import create_qcow2

DISK_FORMATS = ("raw", "qcow2")
#: A disk name (it becomes part of QEMU drive ids and file names).
DISK_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, kw_only=True)
class DiskSettings:
    """One entry of ``disks:``: a base image (never written) or the size of a blank raw disk."""

    file: Path | None = setting(None, doc="the base image (the VM runs on a per-run overlay)")
    format: str | None = setting(None, choices=DISK_FORMATS, doc="raw or qcow2 (default: from the suffix)")
    size: int | None = setting(None, kind="size", doc="a blank raw disk of this size")

    def __post_init__(self) -> None:
        if self.file is None and self.size is None:
            raise SettingValueError("give a file or a size")

    def disk(self, name: str) -> Disk:
        """The per-run disk this entry describes (its file not made yet)."""
        if self.file is not None:
            fmt = self.format or ("qcow2" if self.file.suffix == ".qcow2" else "raw")
            return Disk(name, self.file, fmt, None)
        return Disk(name, None, "raw", self.size)


def disks_shorthand(value: object) -> object:
    """``disks: [a.img, b.qcow2]`` (ini: ``a.img, b.qcow2``) names them disk0, disk1...
    (ini ``root=r.img, scratch=4M`` is read as named disks)."""
    if isinstance(value, str) and "=" not in value:
        value = [p.strip() for p in re.split(r"[\n,]", value) if p.strip()]
    if isinstance(value, list):
        return {f"disk{i}": v for i, v in enumerate(value)}
    return value


def disk_shorthand(value: object) -> object:
    """``name: 4M`` is a blank disk of that size, ``name: FILE`` a base image."""
    return {"size": value} if _is_size(value) else {"file": value}


@dataclass
class Disk:
    """One virtio disk: where it comes from, and the per-run file the VM uses."""

    name: str
    base: Path | None  # never written; None for a blank disk
    base_format: str
    size: int | None  # blank disks only
    path: Path | None = None  # the per-run file (overlay, blank file, or what set_disk gave)
    format: str = "qcow2"


def _is_size(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    return (
        isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[KMGT]i?B?\s*", value, re.IGNORECASE) is not None
    )


class Disks:
    """The disks of one board and their per-run files in ``workdir``."""

    def __init__(self, device: str, disks: dict[str, Disk], workdir: Path, source: str | None) -> None:
        self.device = device
        self._disks = disks
        self.workdir = workdir
        self.source = source

    def __iter__(self) -> Iterator[Disk]:
        return iter(self._disks.values())

    def get(self, name: str) -> Disk:
        if name not in self._disks:
            have = ", ".join(self._disks) or "none"
            raise DriverError(self.device, f"no disk named {name!r} (disks: {have})")
        return self._disks[name]

    def path(self, name: str) -> Path:
        disk = self.get(name)
        if disk.path is None:
            raise DeviceStateError(self.device, f"disk {name!r} has no file yet: start the device first")
        return disk.path

    def format(self, name: str) -> Literal["raw", "qcow2"]:
        return "raw" if self.get(name).format == "raw" else "qcow2"

    def set(self, name: str, path: str | os.PathLike[str], fmt: str) -> None:
        if fmt not in DISK_FORMATS:
            raise DriverError(self.device, f"set_disk({name!r}): format must be raw or qcow2, found {fmt!r}")
        disk = self._disks.get(name)
        if disk is None:
            disk = self._disks[name] = Disk(name, None, fmt, None)
        disk.path = Path(path)
        disk.format = fmt

    def prepare(self) -> None:
        """Make each disk's per-run file: an overlay on its base image, or a blank raw file."""
        for disk in self._disks.values():
            if disk.path is not None:
                continue
            if disk.base is None:
                disk.path = self.workdir / f"disk-{disk.name}.raw"
                with open(disk.path, "wb") as f:
                    f.truncate(disk.size or 0)
                disk.format = "raw"
                continue
            if not disk.base.exists():
                raise DriverError(
                    self.device,
                    f"disk {disk.name!r}: base image {disk.base} does not exist"
                    f" (setting disks in {self.source})",
                )
            overlay = self.workdir / f"disk-{disk.name}.qcow2"
            create_qcow2(
                self.device,
                overlay,
                backing=disk.base,
                backing_format=disk.base_format,
                failure=f"disk {disk.name!r}: qemu-img could not make an overlay on {disk.base}",
            )
            disk.path, disk.format = overlay, "qcow2"

    def remove_files(self) -> None:
        """Delete the per-run files this board made (never a file from elsewhere, never a base image)."""
        for disk in self._disks.values():
            if disk.path is not None and disk.path.parent == self.workdir:
                disk.path.unlink(missing_ok=True)
            disk.path = None
