"""A standalone exporter that disappears in the middle of a test is reported as that, within seconds."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

pytest.importorskip("jumpstarter_cli", reason="needs the [jumpstarter] extra")

from exporter_support import free_port, private_dir, running_exporter

EXPORT = {
    "power": {"type": "jumpstarter_driver_power.driver.MockPower"},
    "serial": {"type": "jumpstarter_driver_pyserial.driver.PySerial", "config": {"url": "loop://"}},
}


def test_an_exporter_killed_mid_test_is_reported_within_seconds(pytester):
    folder = private_dir("pytest-jumpstarter-gone-")
    try:
        with running_exporter("gone", EXPORT, folder, listen=f"127.0.0.1:{free_port()}") as exporter:
            pytester.makefile(
                ".yaml",
                board=(
                    "name: bench\ndevices:\n  board:\n    driver: jumpstarter\n"
                    f"    exporter: {exporter.listen}\n    insecure: true\n"
                    "    power: power\n    console: serial\n    ready: ''\n"
                ),
            )
            flag = pytester.path / "waiting"
            pytester.makepyfile(f"""
                def test_waits(target):
                    board = target.device("board")
                    open({str(flag)!r}, "w").close()
                    board.console.expect("never printed", timeout=120)
            """)

            def kill() -> None:
                while not flag.exists():
                    time.sleep(0.05)  # until the inner test is waiting on the console
                exporter.stop(grace=0)  # the exporter's whole process group, at once

            thread = threading.Thread(target=kill)
            thread.start()
            began = time.monotonic()
            result = pytester.runpytest("--target=board.yaml", "-p", "no:cacheprovider")
            thread.join()
            result.assert_outcomes(failed=1)
            result.stdout.fnmatch_lines(
                [
                    f"*ExporterUnreachable: device 'board': the exporter at {exporter.listen} went away "
                    "during the test (cannot reach the exporter*refused*"
                ]
            )
            assert time.monotonic() - began < 60
    finally:
        shutil.rmtree(folder, ignore_errors=True)
