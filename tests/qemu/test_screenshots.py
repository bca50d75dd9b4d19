"""A QEMU board with a display: screenshots that decode, on demand and in a failed test's report."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pytest_jumpstarter_qemu.images import Images
from qemu_board_helpers import MakeBoard

PIL = pytest.importorskip("PIL.Image", reason="Pillow (the test extra) decodes the PNGs")
EXAMPLES = Path(__file__).resolve().parents[2] / "conftest_examples"


def lit_pixels(path: Path) -> int:
    """How many pixels are not the background colour (the most common one)."""
    with PIL.open(path) as image:
        assert image.format == "PNG"
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    assert colours is not None
    return sum(n for n, _ in colours) - max(n for n, _ in colours)


def test_screenshot_of_the_demo_board_decodes_and_shows_text(
    make_board: MakeBoard, images: Images, tmp_path: Path
) -> None:
    board = make_board(
        {
            "kernel": str(images.linux_kernel),
            "initrd": str(images.linux_initrd),
            "display": True,
            "append": "console=tty0 console=ttyS0,115200 quiet loglevel=3 panic=-1",
        }
    )
    board.start()
    board.console.run("echo 'hello from the guest' > /dev/tty0").check()
    png = board.screenshot(tmp_path / "screen.png")
    assert lit_pixels(png) > 100


def test_a_board_without_display_says_how_to_get_one(make_board: MakeBoard, images: Images) -> None:
    from pytest_jumpstarter.errors import DeviceStateError

    board = make_board(
        {"kernel": str(images.linux_kernel), "initrd": str(images.linux_initrd), "autostart": False}
    )
    with pytest.raises(DeviceStateError, match="set display: true"):
        board.screenshot()


def test_a_failed_test_on_the_display_board_reports_the_screen(
    pytester: pytest.Pytester, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUMPSTARTER_IMAGES", str(images.root))
    pytester.makepyfile(
        """
        def test_fails_on_screen(qemu_vm):
            qemu_vm.console.run("echo 'the screen of a failure' > /dev/tty0").check()
            assert False, "look at the screen"
        """
    )
    target = EXAMPLES / "qemu-x86_64-display.yaml"
    logs = pytester.path / "logs"
    result = pytester.runpytest(f"--target={target}", "--junitxml=out.xml", f"--jumpstarter-logdir={logs}")
    result.assert_outcomes(failed=1)
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "out.xml").iter("property")}
    shot = Path(props["jumpstarter_screenshot_qemu_vm"])
    assert shot.parent == pytester.path / "logs" / shot.parent.name
    assert lit_pixels(shot) > 100
