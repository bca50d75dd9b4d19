"""A remote exporter or controller that disappears mid-test (Jumpstarter lab boards).

The same parts as tests/remote (a real ``jmp run`` exporter, the controller stand-in over real gRPC
and TLS), here as fault-suite entries: what the user saw, what was left, how long it took.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
from fault_support import first_line_with, leftovers, record, start_inner

pytest.importorskip(
    "jumpstarter_cli",
    reason="needs the [jumpstarter] extra (pip install -e '.[jumpstarter]'): a real exporter",
)
sys.path.insert(0, str(Path(__file__).parents[1] / "remote"))

from controller import MOCK_EXPORT, running_lab
from exporter_support import free_port, private_dir, running_exporter

#: The cheapest exporter with a power and a console: no QEMU on the exporter side.
EXPORT = MOCK_EXPORT

WAITING_TEST = """
import os

def test_waits(target):
    board = target.device("board")
    open(os.path.join(os.environ["FAULT_DIR"], "waiting"), "w").close()
    board.console.expect("never printed", timeout=120)
"""


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_an_exporter_that_disappears_mid_test_is_reported_as_gone(tmp_path: Path, how: str) -> None:
    folder = private_dir("pytest-jumpstarter-gone-")
    try:
        with running_exporter("gone", EXPORT, folder, listen=f"127.0.0.1:{free_port()}") as exporter:
            (tmp_path / "board.yaml").write_text(
                "name: bench\ndevices:\n  board:\n    driver: jumpstarter\n"
                f"    exporter: {exporter.listen}\n    insecure: true\n"
                "    power: power\n    console: serial\n    ready: ''\n"
            )
            (tmp_path / "test_board.py").write_text(WAITING_TEST)
            inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
            inner.wait_for_file_glob("waiting")
            sent = time.monotonic()
            # SIGTERM: the exporter's whole process group, at once (it closes its streams a moment before
            # its listener); SIGKILL: a crash of the exporter and its child, one after the other.
            if how == "SIGTERM":
                exporter.stop(grace=0)
            else:
                exporter.kill_hard()
            code = inner.finish()
            took = time.monotonic() - sent
            left = leftovers(inner) + [f"exporter process {p}" for p in exporter.leftovers()]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seen = first_line_with(inner.text, "ExporterUnreachable")
    record(f"a remote exporter disappears mid-test ({how})", seen, left, took, code)
    assert f"the exporter at {exporter.listen} went away during the test" in seen, inner.text
    assert "1 failed" in inner.text, inner.text
    assert not left, left


def test_a_controller_that_disappears_mid_test_is_reported_as_lost(tmp_path: Path) -> None:
    with running_lab() as (ctl, exporter, _):
        client = ctl.client_config(tmp_path / "client.yaml", "alice")
        (tmp_path / "lab.yaml").write_text(
            "name: lab\ndevices:\n  board:\n    driver: jumpstarter\n    scope: module\n"
            f"    client: {client}\n    selector: {{board: mock}}\n"
            "    power: power\n    console: serial\n    ready: ''\n"
        )
        (tmp_path / "test_board.py").write_text(WAITING_TEST)
        inner = start_inner(tmp_path, "--target=lab.yaml", "-rA")
        inner.wait_for_file_glob("waiting")
        sent = time.monotonic()
        ctl.stop()
        code = inner.finish()
        took = time.monotonic() - sent
        left = leftovers(inner)
    left_exporter = exporter.leftovers()
    left += [f"exporter process {p}" for p in left_exporter]
    seen = first_line_with(inner.text, "ControllerLost")
    record("the controller disappears mid-test", seen, left, took, code)
    assert f"the controller at {ctl.address} went away during lease" in seen, inner.text
    assert "1 failed" in inner.text, inner.text
    assert not left, left
