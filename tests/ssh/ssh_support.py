"""Helpers for the ssh family's tests: a demo board with dropbear, and ssh/files devices built on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images, require_images
from pytest_jumpstarter_ssh import Files, SshShell

from pytest_jumpstarter.driver import DeviceContext, Driver, Transcript

MakeDevice = Callable[..., Any]


def ssh_images() -> Images:
    """The demo images, which must be recent enough to carry dropbear (build-images writes its key)."""
    images = require_images()
    if not (images.linux_kernel.parent / "ssh_host_ed25519_key.pub").exists():
        pytest.fail("the demo images predate SSH on the demo board: run scripts/build-images")
    return images


def host_key(images: Images) -> Path:
    return images.linux_kernel.parent / "ssh_host_ed25519_key.pub"


def device(
    cls: type[Driver[Any]], settings: dict[str, Any], workdir: Path, name: str, **refs: Driver[Any]
) -> Any:
    """A device with settings built as the target loader builds them, and its refs."""
    typed = cls.settings_from(settings, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = DeviceContext(
        name=name, target="test", settings=typed, workdir=workdir, transcript=Transcript(), refs=refs
    )
    return cls(ctx)


def board(images: Images, workdir: Path, **more: Any) -> QemuBoard:
    settings = {
        "kernel": str(images.linux_kernel),
        "initrd": str(images.linux_initrd),
        "memory": "512M",  # a 64 MiB file in the board's tmpfs, and its copy
        **more,
    }
    return device(QemuBoard, settings, workdir, "qemu_vm")  # type: ignore[no-any-return]


def ssh_on(qemu: QemuBoard, workdir: Path, **settings: Any) -> SshShell:
    return device(SshShell, {"board": "qemu_vm", **settings}, workdir, "ssh", board=qemu)  # type: ignore[no-any-return]


def files_on(qemu: QemuBoard, workdir: Path, ssh: SshShell | None = None, **settings: Any) -> Files:
    refs: dict[str, Driver[Any]] = {"board": qemu}
    if ssh is not None:
        refs["ssh"] = ssh
        settings = {"ssh": "ssh", **settings}
    return device(Files, {"board": "qemu_vm", **settings}, workdir, "files", **refs)  # type: ignore[no-any-return]
