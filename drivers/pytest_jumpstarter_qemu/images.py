"""Where the demo board images are (built by ``scripts/build-images``), and how tests that need them skip.

A test that needs a demo board calls :func:`require_images` (or uses the ``demo_images`` fixture the
plugin provides through this module): without the images it is skipped with the command that
builds them, unless ``JUMPSTARTER_REQUIRE_IMAGES=1`` (CI), where missing images are a failure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The images every demo board needs, relative to the images folder.
LINUX_KERNEL = "linux-x86_64/vmlinuz"
LINUX_INITRD = "linux-x86_64/initramfs.cpio.gz"
UBOOT_ARM64 = "uboot-arm64/u-boot.bin"
ALL = (LINUX_KERNEL, LINUX_INITRD, UBOOT_ARM64)

BUILD_HINT = "run scripts/build-images"


def images_dir() -> Path:
    """``$JUMPSTARTER_IMAGES``, or ``~/.cache/pytest-jumpstarter/images``."""
    return Path(os.environ.get("JUMPSTARTER_IMAGES") or "~/.cache/pytest-jumpstarter/images").expanduser()


@dataclass(frozen=True)
class Images:
    """Paths of the demo images in one folder."""

    root: Path

    @property
    def linux_kernel(self) -> Path:
        return self.root / LINUX_KERNEL

    @property
    def linux_initrd(self) -> Path:
        return self.root / LINUX_INITRD

    @property
    def uboot_arm64(self) -> Path:
        return self.root / UBOOT_ARM64

    def missing(self, names: tuple[str, ...] = ALL) -> list[Path]:
        return [self.root / n for n in names if not (self.root / n).is_file()]


def images_required() -> bool:
    """True when missing images must fail a run instead of skipping (``JUMPSTARTER_REQUIRE_IMAGES=1``)."""
    return os.environ.get("JUMPSTARTER_REQUIRE_IMAGES", "").strip().lower() in ("1", "true", "yes", "on")


def require_images(*names: str) -> Images:
    """The demo images, or skip the calling test (fail it under ``JUMPSTARTER_REQUIRE_IMAGES=1``).

    ``names`` narrows which images are needed (default: all of them), e.g. ``require_images(UBOOT_ARM64)``.
    """
    images = Images(images_dir())
    missing = images.missing(names or ALL)
    if missing:
        listed = ", ".join(str(p) for p in missing)
        if images_required():
            pytest.fail(
                f"demo images missing: {listed}"
                f" (JUMPSTARTER_REQUIRE_IMAGES=1 makes this a failure; {BUILD_HINT})",
                pytrace=False,
            )
        pytest.skip(f"demo images missing: {listed} ({BUILD_HINT})")
    return images


@pytest.fixture(scope="session")
def demo_images() -> Images:
    """The demo images; skips (or fails, under ``JUMPSTARTER_REQUIRE_IMAGES=1``) when they are missing."""
    return require_images()
