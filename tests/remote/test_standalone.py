"""driver: jumpstarter against a real standalone exporter (jmp run --tls-grpc-listener) over real gRPC."""

from __future__ import annotations

import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from exporter_support import BOOTDISK

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "conftest_examples"

pytestmark = pytest.mark.qemu


def board_yaml(address: str, **extra: str) -> str:
    lines = [
        "name: remote",
        "labels: {os: linux}",
        "devices:",
        "  board:",
        "    driver: jumpstarter",
        "    scope: module",
        f"    exporter: {address}",
        "    insecure: true",
        "    exclusive: true",
        "    power: qemu.power",
        "    console: qemu.console",
        "    flasher: qemu.flasher",
        "    network: {http: qemu.http, echo: qemu.echo}",
    ]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def test_same_examples_pass_on_the_local_board_and_the_leased_one(pytester, demo_exporter, monkeypatch):
    """The ladder: conftest_examples on our QEMU board and on the exporter's, two --targets, one run."""
    address = demo_exporter.listen
    monkeypatch.setenv("JUMPSTARTER_EXPORTER", address)
    # pytester gives the run its own HOME: point the local board at the real image cache.
    monkeypatch.setenv("JUMPSTARTER_IMAGES", str(BOOTDISK.parent.parent))
    junit = pytester.path / "ladder.xml"
    result = pytester.runpytest_subprocess(
        str(EXAMPLES / "test_qemu_examples.py"),
        str(EXAMPLES / "test_network_examples.py"),
        f"--target={EXAMPLES / 'qemu-x86_64.yaml'}",
        f"--target={EXAMPLES / 'jumpstarter-qemu.yaml'}",
        "-v",
        "-p",
        "no:cacheprovider",
        f"--jumpstarter-lock-dir={pytester.path / 'locks'}",
        f"--junitxml={junit}",
    )
    # Outcomes from the JUnit file: the terminal's lines also carry progress notices.
    outcomes: dict[str, dict[str, str]] = {"qemu-x86_64": {}, "jumpstarter-qemu": {}}
    for case in ET.parse(junit).iter("testcase"):
        test, _, rest = case.get("name", "").partition("[")
        target = rest.rstrip("]")
        if target in outcomes:
            kinds = {child.tag for child in case}
            outcomes[target][test] = next(
                (
                    word
                    for tag, word in (("failure", "FAILED"), ("error", "ERROR"), ("skipped", "SKIPPED"))
                    if tag in kinds
                ),
                "PASSED",
            )
    local, remote = outcomes["qemu-x86_64"], outcomes["jumpstarter-qemu"]
    assert local and set(local) == set(remote), result.stdout.str()
    differ = {t: (local[t], remote[t]) for t in local if local[t] != remote[t]}
    # The only test allowed to differ needs QMP, which only the local board has (it is skipped remotely).
    assert set(differ) <= {"test_qmp_says_the_guest_runs"}, result.stdout.str()
    assert differ.get("test_qmp_says_the_guest_runs", ("PASSED", "SKIPPED")) == ("PASSED", "SKIPPED")
    assert "FAILED" not in local.values() and "ERROR" not in local.values(), result.stdout.str()


def test_flash_is_verified_and_the_board_boots_what_was_flashed(pytester, demo_exporter):
    pytester.makefile(".yaml", board=board_yaml(demo_exporter.listen, autostart="false"))
    pytester.makepyfile(
        f"""
        import gzip, os

        def test_flash_then_boot(target, tmp_path):
            board = target.device("board")
            assert not board.is_running
            result = board.flash({str(BOOTDISK)!r})
            assert result.verified and result.image_size == os.path.getsize({str(BOOTDISK)!r})
            board.on()
            assert board.console.run("echo flashed-$((6*7))").output == "flashed-42"
            board.off()
            data = os.urandom(300 * 1024)
            (tmp_path / "blob.img.gz").write_bytes(gzip.compress(data, 1))
            result = board.flash(tmp_path / "blob.img.gz")
            assert result.verified and result.image_size == len(data)
            board.dump(result.target, tmp_path / "back.img", len(data))
            assert (tmp_path / "back.img").read_bytes() == data
        """
    )
    result = pytester.runpytest(
        "--target=board.yaml", "-p", "no:cacheprovider", f"--jumpstarter-lock-dir={pytester.path}"
    )
    result.assert_outcomes(passed=1)


def test_junit_names_the_exporter_and_never_the_passphrase(pytester, monkeypatch):
    """A passphrase-protected exporter (a MockPower: nothing boots): the JUnit properties say where the
    board was served from, and the passphrase, listed in secrets:, appears nowhere in the XML."""
    pytest.importorskip("jumpstarter_cli", reason="needs the [jumpstarter] extra")
    from exporter_support import free_port, private_dir, running_exporter

    secret = "s3cret-pass-4711"
    workdir = private_dir("pytest-jumpstarter-pass-")
    export = {"power": {"type": "jumpstarter_driver_power.driver.MockPower"}}
    try:
        listen = f"127.0.0.1:{free_port()}"
        with running_exporter("locked", export, workdir, listen=listen, passphrase=secret):
            monkeypatch.setenv("EXPORTER_PASS", secret)
            pytester.makefile(
                ".yaml",
                board="name: remote\nsecrets: [EXPORTER_PASS]\ndevices:\n  board:\n    driver: jumpstarter\n"
                f"    exporter: {listen}\n    insecure: true\n    passphrase: ${{EXPORTER_PASS}}\n"
                "    power: power\n",
            )
            pytester.makepyfile(
                "def test_on(target):\n    target.device('board').on()\n"
                "def test_fails(target):\n    target.device('board')\n    assert False\n"
            )
            result = pytester.runpytest("--target=board.yaml", "-p", "no:cacheprovider", "--junitxml=out.xml")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.assert_outcomes(passed=1, failed=1)
    xml = (pytester.path / "out.xml").read_text()
    assert secret not in xml
    for case in ET.fromstring(xml).iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["jumpstarter_board_exporter"] == listen, props
        assert props["jumpstarter_device_board"] == "jumpstarter", props


def test_a_path_the_exporter_lacks_names_device_path_and_what_exists(pytester, demo_exporter):
    pytester.makefile(".yaml", board=board_yaml(demo_exporter.listen).replace("qemu.power", "qemu.pwr"))
    pytester.makepyfile("def test_x(target):\n    target.device('board')\n")
    result = pytester.runpytest(
        "--target=board.yaml", "-p", "no:cacheprovider", f"--jumpstarter-lock-dir={pytester.path}"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*device 'board': power: the exporter has no driver at path 'qemu.pwr'; its driver tree has:*qemu.power (PowerClient)*"
        ]
    )


def test_an_unreachable_exporter_fails_within_seconds_naming_the_address(pytester):
    pytest.importorskip("jumpstarter")
    from exporter_support import free_port

    address = f"127.0.0.1:{free_port()}"
    pytester.makefile(".yaml", board=board_yaml(address))
    pytester.makepyfile("def test_x(target):\n    target.device('board')\n")
    began = time.monotonic()
    result = pytester.runpytest_subprocess(
        "--target=board.yaml", "-p", "no:cacheprovider", f"--jumpstarter-lock-dir={pytester.path}"
    )
    elapsed = time.monotonic() - began
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*cannot reach the exporter at {address}: *refused*"])
    assert elapsed < 30, f"took {elapsed:.1f}s"


def test_an_exporter_that_accepts_but_never_answers_fails_naming_the_address(pytester):
    pytest.importorskip("jumpstarter")
    import socket

    with socket.socket() as silent:  # the kernel accepts connections; nothing ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        pytester.makefile(".yaml", board=board_yaml(address, connect_timeout="2s"))
        pytester.makepyfile("def test_x(target):\n    target.device('board')\n")
        result = pytester.runpytest(
            "--target=board.yaml", "-p", "no:cacheprovider", f"--jumpstarter-lock-dir={pytester.path}"
        )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*exporter at {address} did not answer within 2s*"])


def test_listing_says_an_exporter_is_unreachable_and_imports_no_client_stack(pytester):
    pytester.makefile(".yaml", board=board_yaml("127.0.0.1:1"))
    pytester.makepyfile(
        conftest="""
        import sys
        def pytest_unconfigure(config):
            print("CLIENT STACK IMPORTED" if "jumpstarter.client" in sys.modules else "no client stack")
        """,
        test_x="def test_x(target):\n    pass\n",
    )
    result = pytester.runpytest_subprocess("--target=board.yaml", "--jumpstarter-list", "-s")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*board: driver jumpstarter, role board*",
            "*exporter = '127.0.0.1:1'*",
            "*exporter 127.0.0.1:1: not reachable, driver tree not read (cannot reach the exporter at 127.0.0.1:1*",
            "*no client stack*",
        ]
    )


def test_listing_shows_the_exporters_driver_tree_and_powers_nothing(pytester, demo_exporter):
    def qemus() -> list[int]:
        return [
            p for p in demo_exporter.leftovers() if b"qemu-system" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]

    assert not qemus(), "the demo board runs before the listing: this test proves nothing"
    pytester.makefile(".yaml", board=board_yaml(demo_exporter.listen).replace("qemu.flasher", "qemu.flash"))
    pytester.makepyfile("def test_x(target):\n    pass\n")
    result = pytester.runpytest("--target=board.yaml", "--jumpstarter-list", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            f"*exporter {demo_exporter.listen}: driver tree (read from the exporter; nothing powered):",
            "*  qemu (QemuClient)",
            "*    qemu.console (PySerialClient)  <- console",
            "*    qemu.echo (NetworkClient)  <- network.echo",
            "*    qemu.power (PowerClient)  <- power",
            "*flasher: 'qemu.flash' is NOT in this tree",
            "*tests that run here (1):",
        ]
    )
    assert not qemus(), "the listing powered the board on"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"client": "c.yaml", "selector": "{board: x}"},
            "expected exactly one of exporter:*found exporter, client*",
        ),
        ({"exporter": None}, "expected exactly one of exporter:*found none of them*"),
        ({"selector": "{board: x}"}, "selector: needs client:*"),
    ],
)
def test_sources_are_checked_at_load_with_file_and_line(pytester, settings, message):
    text = board_yaml("127.0.0.1:1")
    for key, value in settings.items():
        if value is None:
            text = (
                "\n".join(line for line in text.splitlines() if not line.strip().startswith(f"{key}:")) + "\n"
            )
            text = text.replace("    insecure: true\n", "")
        else:
            text += f"    {key}: {value}\n"
    (pytester.path / "c.yaml").write_text("{}\n")
    pytester.makefile(".yaml", board=text)
    pytester.makepyfile("def test_x(target):\n    pass\n")
    result = pytester.runpytest("--target=board.yaml")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        ["*1 problem in target description:", "  board.yaml:*: devices.board.*" + message]
    )
