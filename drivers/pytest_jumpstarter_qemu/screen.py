"""Screenshots of a QEMU board with a display (``display: true``): a PNG through QMP ``screendump``.

QEMU 7.1 and later write PNG themselves (``format: png``, when built with libpng, as Debian's is);
an older or PNG-less QEMU writes PPM, which Pillow (the ``screenshots`` extra) converts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_jumpstarter.errors import DeviceStateError, DriverError

#: The display device of each bus: VGA on PC machines, virtio-gpu on virt machines (with -nodefaults).
DISPLAY_DEVICE = {"pci": "VGA", "device": "virtio-gpu-device"}


if TYPE_CHECKING:
    from .board import QemuBoard


def display_args(bus: str) -> list[str]:
    return ["-device", DISPLAY_DEVICE.get(bus, "VGA")]


def screendump(device: str, execute: Callable[..., Any], path: Path) -> Path:
    """Write the board's screen to ``path`` as PNG; ``execute`` is the board's QMP ``execute``."""
    try:
        execute("screendump", {"filename": str(path), "format": "png"})
        return path
    except DriverError as exc:
        if "format" not in str(exc) and "png" not in str(exc).lower():
            raise
    # No PNG in this QEMU: PPM, converted.
    ppm = path.with_suffix(".ppm")
    execute("screendump", {"filename": str(ppm)})
    try:
        from PIL import Image
    except ImportError:
        raise DriverError(
            device,
            f"this QEMU writes screenshots as PPM only ({ppm}); install Pillow "
            "(pip install 'pytest-jumpstarter[screenshots]') to get PNGs",
        ) from None
    with Image.open(ppm) as image:
        image.save(path, format="PNG")
    ppm.unlink()
    return path


def board_screenshot(board: QemuBoard, path: Path | None = None) -> Path:
    """``board.screenshot()``: the screen as a PNG (default: a new file in the board's folder)."""
    if not board.config.display:
        raise DeviceStateError(board.device_name, "screenshot() needs a display: set display: true")
    board.shots += 1
    return screendump(
        board.device_name, board.execute, path or board.ctx.workdir / f"screen-{board.shots}.png"
    )
