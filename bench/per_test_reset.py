#!/usr/bin/env python3
"""Per-test reset of a Linux board: ``reset: snapshot`` vs ``reset: reboot``, and ``-n 2`` vs ``-n 0``.

Runs the same 20 device tests, each needing a pristine board (it checks that the file the test
before it wrote is gone, then writes it), through real pytest subprocesses on the demo x86_64
board (TCG), with a session-scoped board:

1. ``reset: snapshot``, ``-n 0``  (the board is restored with loadvm before each test)
2. ``reset: reboot``,   ``-n 0``  (QMP system_reset + wait for the prompt before each test)
3. ``reset: snapshot``, ``-n 2``  (two workers, two boards)
4. ``reset: none``,     ``-n 0``  (no reset: what the test and pytest cost without one;
   each test then finds the earlier test's file, so this case does not check it)

"Per test" is the steady-state interval between consecutive test bodies on one board: reset,
plugin bookkeeping and the test itself; the first boot and pytest's start-up are not in it (they
are in the run's wall time, also printed).  Then a profile of one restore (loadvm, console resync)
on a board driven directly, and the QEMU memory the runs reported.

    python bench/per_test_reset.py [--tests 20]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_jumpstarter_qemu.images import Images, images_dir

BOARD = """
name: bench
devices:
  qemu_vm:
    driver: qemu
    scope: session
    reset: {reset}
    kernel: {kernel}
    initrd: {initrd}
"""

TESTS = r"""
import json
import os
import time

import pytest

RECORDS = "@RECORDS@"


@pytest.mark.parametrize("n", range(@COUNT@))
def test_needs_a_pristine_board(qemu_vm, n):
    begun = time.monotonic()
    run = qemu_vm.console.run
    assert run("test -e /root/left-behind").status == @LEFT@, "a file from an earlier test survived"
    run("touch /root/left-behind").check()
    with open(RECORDS, "a") as f:
        f.write(json.dumps({"n": n, "t": begun, "worker": os.environ.get("PYTEST_XDIST_WORKER", "-")}) + "\n")
"""


def run_case(folder: Path, reset: str, workers: int, count: int, images: Images) -> dict[str, object]:
    case = folder / f"{reset}-n{workers}"
    case.mkdir()
    records = case / "records.jsonl"
    (case / "board.yaml").write_text(
        BOARD.format(reset=reset, kernel=images.linux_kernel, initrd=images.linux_initrd)
    )
    (case / "test_bench.py").write_text(
        TESTS.replace("@RECORDS@", str(records))
        .replace("@COUNT@", str(count))
        # Without a reset the file is there from the second test on.
        .replace("@LEFT@", "(0 if n else 1)" if reset == "none" else "1")
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=300",
               "--target=board.yaml", "-n", str(workers), "-p", "xdist"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    started = time.monotonic()
    result = subprocess.run(command, cwd=case, env=env, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    if result.returncode != 0 or f"{count} passed" not in result.stdout:
        sys.exit(f"{reset} -n {workers}: the run failed:\n{result.stdout}\n{result.stderr}")
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    gaps: list[float] = []
    for worker in {r["worker"] for r in rows}:
        times = sorted(r["t"] for r in rows if r["worker"] == worker)
        gaps += [b - a for a, b in itertools.pairwise(times)]
    rss = [int(m) for m in re.findall(r"RSS up to (\d+) MiB", result.stdout)]
    peaks = [int(m) for m in re.findall(r"peak (\d+) MiB", result.stdout)]
    return {
        "wall": wall,
        # pytest's start-up, collection, (xdist's workers) and the first boot + savevm
        "first": min(r["t"] for r in rows) - started,
        "per_test": statistics.median(gaps),
        "per_test_mean": statistics.fmean(gaps),
        "boards": len(rss),
        "rss": max(rss) if rss else 0,
        "peak": max(peaks) if peaks else 0,
    }


def profile_restore(images: Images, rounds: int = 15) -> dict[str, float]:
    """loadvm and console resync of one board driven directly (no pytest), median of ``rounds``."""
    from pytest_jumpstarter_qemu import QemuBoard

    from pytest_jumpstarter.driver import DeviceContext, Transcript

    with tempfile.TemporaryDirectory(prefix="bench-reset-") as tmp:
        settings = {"kernel": str(images.linux_kernel), "initrd": str(images.linux_initrd)}
        typed = QemuBoard.settings_from(settings, Path(tmp))
        ctx = DeviceContext(
            name="qemu_vm", target="bench", settings=typed, workdir=Path(tmp), transcript=Transcript(),
            reset="snapshot",
        )  # fmt: skip
        board = QemuBoard(ctx)
        started = time.monotonic()
        board.start()
        try:
            boot_and_save = time.monotonic() - started
            loadvm, resync, reboot = [], [], []
            for _ in range(rounds):
                board.console.run("touch /root/left-behind").check()
                t0 = time.monotonic()
                board.hmp("loadvm jumpstarter-pristine")
                t1 = time.monotonic()
                board.console.drain(quiet=0.0, limit=0.5)
                board.sync_console(10.0)
                t2 = time.monotonic()
                loadvm.append(t1 - t0)
                resync.append(t2 - t1)
            for _ in range(3):
                t0 = time.monotonic()
                board.restore("reboot")
                reboot.append(time.monotonic() - t0)
        finally:
            board.stop()
    return {
        "boot_and_save": boot_and_save,
        "loadvm": statistics.median(loadvm),
        "resync": statistics.median(resync),
        "restore": statistics.median(a + b for a, b in zip(loadvm, resync, strict=True)),
        "reboot": statistics.median(reboot),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=20)
    args = parser.parse_args()
    images = Images(images_dir())
    if images.missing(("linux-x86_64/vmlinuz", "linux-x86_64/initramfs.cpio.gz")):
        sys.exit(f"demo images missing in {images.root}: run scripts/build-images")
    with tempfile.TemporaryDirectory(prefix="bench-reset-") as tmp:
        folder = Path(tmp)
        snapshot = run_case(folder, "snapshot", 0, args.tests, images)
        reboot = run_case(folder, "reboot", 0, args.tests, images)
        parallel = run_case(folder, "snapshot", 2, args.tests, images)
        baseline = run_case(folder, "none", 0, args.tests, images)
    profile = profile_restore(images)

    def row(name: str, r: dict[str, object]) -> str:
        return (
            f"{name:<22} {r['per_test']:8.3f} s {r['per_test_mean']:8.3f} s"
            f" {r['wall']:8.2f} s {r['first']:8.2f} s"
            f"  {r['boards']} x {r['rss']} MiB (peak {r['peak']})"
        )

    print(f"{args.tests} device tests, each on a pristine x86_64 board (TCG, -m 256), scope session")
    head = f"{'run':<22} {'per test':>10} {'(mean)':>10} {'run wall':>10} {'1st test':>10}"
    print(f"{head}  QEMU RSS per board")
    print(row("reset: snapshot -n 0", snapshot))
    print(row("reset: reboot   -n 0", reboot))
    print(row("reset: snapshot -n 2", parallel))
    print(row("reset: none     -n 0", baseline))
    ratio = float(snapshot["per_test"]) / float(reboot["per_test"])  # type: ignore[arg-type]
    print(f"snapshot / reboot per test: {ratio:.3f}x  (goal <= 0.1x)")
    print(f"snapshot per test: {snapshot['per_test']:.3f} s  (goal <= 0.5 s)")
    speedup = float(snapshot["wall"]) / float(parallel["wall"])  # type: ignore[arg-type]
    print(f"-n 2 vs -n 0 (snapshot), run wall time: {speedup:.2f}x faster")
    print(
        f"profile of one restore (board driven directly, median of 15): loadvm {profile['loadvm']:.3f} s"
        f" + console resync {profile['resync']:.3f} s = {profile['restore']:.3f} s;"
        f" reboot {profile['reboot']:.3f} s; first boot + savevm {profile['boot_and_save']:.2f} s"
    )
    reset_cost = float(snapshot["per_test"]) - float(baseline["per_test"])  # type: ignore[arg-type]
    print(
        f"a test without any reset (its two commands, pytest and the plugin): {baseline['per_test']:.3f} s;"
        f" so a snapshot reset through the plugin adds {reset_cost:.3f} s"
    )


if __name__ == "__main__":
    main()
