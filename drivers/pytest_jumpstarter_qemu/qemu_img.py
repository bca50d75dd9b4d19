"""The one ``qemu-img`` helper: overlays and state drives for boards, conversions for the qemu-disk flasher.

Each call is bounded, a missing ``qemu-img`` is :class:`~pytest_jumpstarter.errors.CommandNotFound`
saying what to install, and a failure is :class:`~pytest_jumpstarter.errors.CommandFailed` with
qemu-img's own words.
"""

from __future__ import annotations

import json
from pathlib import Path

from pytest_jumpstarter.errors import CommandFailed
from pytest_jumpstarter.process import run

_HINT = "(apt-get install qemu-utils)"


def qemu_img(device: str, *args: str, timeout: float = 300.0, what: str | None = None) -> str:
    """Run ``qemu-img ARGS`` and return its stdout."""
    return run(["qemu-img", *args], device=device, timeout=timeout, what=what, hint=_HINT)


def create_qcow2(
    device: str,
    path: Path,
    *,
    size: str | None = None,
    backing: Path | None = None,
    backing_format: str | None = None,
    failure: str,
) -> None:
    """``qemu-img create -f qcow2``: a blank image of ``size``, or an overlay on ``backing``.

    A failure raises :class:`CommandFailed` whose message starts with ``failure``.
    """
    args = ["create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-b", str(backing.resolve()), "-F", backing_format or "raw"]
    args.append(str(path))
    if size is not None:
        args.append(size)
    try:
        qemu_img(device, *args, timeout=30.0)
    except CommandFailed as exc:
        raise CommandFailed(
            device, f"{failure}: {exc.stderr.strip()}", returncode=exc.returncode, stderr=exc.stderr
        ) from exc


def virtual_size(device: str, path: Path, fmt: str) -> int:
    """The size the guest sees of the image at ``path``."""
    if fmt == "raw":
        return path.stat().st_size if path.exists() else 0
    info = json.loads(qemu_img(device, "info", "--output=json", "-f", fmt, str(path), timeout=30.0))
    return int(info["virtual-size"])


def convert_to_raw(device: str, source: Path, fmt: str, dest: Path, timeout: float = 300.0) -> None:
    """Write ``source`` (of format ``fmt``) as a raw image at ``dest``."""
    qemu_img(device, "convert", "-f", fmt, "-O", "raw", str(source), str(dest), timeout=timeout)
