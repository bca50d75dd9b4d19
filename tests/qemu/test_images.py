"""Finding the demo images, and skipping or failing when they are missing."""

from __future__ import annotations

import pytest


def test_missing_images_skip_with_the_build_command(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        from pytest_jumpstarter_qemu.images import require_images

        def test_needs_images():
            require_images()
        """
    )
    monkeypatch.setenv("JUMPSTARTER_IMAGES", str(pytester.path / "no-images"))
    monkeypatch.delenv("JUMPSTARTER_REQUIRE_IMAGES", raising=False)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*demo images missing*run scripts/build-images*"])


def test_missing_images_fail_when_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        from pytest_jumpstarter_qemu.images import require_images

        def test_needs_images():
            require_images()
        """
    )
    monkeypatch.setenv("JUMPSTARTER_IMAGES", str(pytester.path / "no-images"))
    monkeypatch.setenv("JUMPSTARTER_REQUIRE_IMAGES", "1")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*JUMPSTARTER_REQUIRE_IMAGES=1 makes this a failure*"])


def test_images_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    from pytest_jumpstarter_qemu.images import images_dir, require_images

    root = Path(str(tmp_path))
    for name in ("linux-x86_64/vmlinuz", "linux-x86_64/initramfs.cpio.gz", "uboot-arm64/u-boot.bin"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    monkeypatch.setenv("JUMPSTARTER_IMAGES", str(root))
    assert images_dir() == root
    assert require_images().linux_kernel == root / "linux-x86_64/vmlinuz"
