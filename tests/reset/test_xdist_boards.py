"""pytest -n 2: each xdist worker gets its own QEMU board (process, sockets, ports, files), reset per test."""

from __future__ import annotations

import pytest
from pytest_jumpstarter_qemu.images import Images
from reset_support import read_records

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(240)]

BOARD = """
name: snap
devices:
  qemu_vm:
    driver: qemu
    scope: session
    reset: snapshot
    kernel: {kernel}
    initrd: {initrd}
    network:
      forwards: {{http: 80}}
"""

TESTS = r"""
import json
import os
import urllib.request

import pytest

RECORDS = "@RECORDS@"


@pytest.mark.parametrize("n", range(8))
def test_on_a_board(qemu_vm, n):
    run = qemu_vm.console.run
    assert run("test -e /root/left-behind").status == 1, "a file from an earlier test survived"
    run("touch /root/left-behind").check()
    port = qemu_vm.forward("http")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
        assert answer.status == 200
    record = {
        "n": n,
        "worker": os.environ.get("PYTEST_XDIST_WORKER"),
        "pid": qemu_vm.pid,
        "workdir": str(qemu_vm.ctx.workdir),
        "console": qemu_vm.console.transport.sock.getsockname(),
        "port": port,
    }
    with open(RECORDS, "a") as f:
        f.write(json.dumps(record) + "\n")
"""


def test_two_workers_each_run_their_tests_on_a_board_of_their_own(
    pytester: pytest.Pytester, images: Images
) -> None:
    records_path = pytester.path / "records.jsonl"
    pytester.makefile(".yaml", board=BOARD.format(kernel=images.linux_kernel, initrd=images.linux_initrd))
    pytester.makepyfile(test_boards=TESTS.replace("@RECORDS@", str(records_path)))
    result = pytester.runpytest_subprocess(
        "--target=board.yaml", "-n", "2", "-p", "xdist", "-p", "no:cacheprovider", "--timeout=120"
    )
    result.assert_outcomes(passed=8)
    records = read_records(records_path)
    assert sorted(r["n"] for r in records) == list(range(8))
    by_worker: dict[str, list[dict]] = {}
    for record in records:
        by_worker.setdefault(record["worker"], []).append(record)
    assert sorted(by_worker) == ["gw0", "gw1"], records
    boards = {}
    for worker, mine in by_worker.items():
        # One board per worker, kept for all its tests ...
        (board,) = {(r["pid"], r["workdir"], r["console"], r["port"]) for r in mine}
        boards[worker] = board
    # ... and nothing of it shared with the other worker's board.
    for a, b in zip(boards["gw0"], boards["gw1"], strict=True):
        assert a != b, boards
    # The controller's summary shows both boards' memory (carried over from the workers).
    result.stdout.fnmatch_lines(["*jumpstarter QEMU memory*"])
    memory_lines = [line for line in result.outlines if line.startswith("snap/qemu_vm (QEMU pid")]
    assert len(memory_lines) == 2, memory_lines
