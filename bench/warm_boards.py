#!/usr/bin/env python3
"""Warm boards: the booted state kept across runs vs a cold boot, on the demo boards (TCG), one invocation.

1. first command of a board: cold boot (cache off) vs start from a cache hit (Linux x86_64 and
   U-Boot arm64), driven directly; and a cache miss (boot, then save) vs the cold boot;
2. ``reset: snapshot`` per test: one in-place restore (loadvm + console resync), median;
3. ``scope: test`` boards, per test, through pytest: a new QEMU per test, cache off vs on (warm);
4. the examples suite (conftest_examples on qemu-x86_64.yaml): first run on an empty cache vs second;
5. memory and disk: the entry's size on disk, QEMU RSS after a cold boot vs after a restore.

    python bench/warm_boards.py [--rounds 3] [--tests 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images, require_images
from pytest_jumpstarter_qemu.statecache import StateCache

from pytest_jumpstarter.driver import DeviceContext, Transcript

ROOT = Path(__file__).resolve().parent.parent


def board(settings: dict[str, Any], workdir: Path, mode: str, cache: Path, reset: str = "none") -> QemuBoard:
    workdir.mkdir(parents=True, exist_ok=True)
    typed = QemuBoard.settings_from(settings, workdir)
    extra = {"cache_mode": mode, "cache_dir": cache}
    ctx = DeviceContext(
        name="qemu_vm", target="bench", settings=typed, workdir=workdir, transcript=Transcript(),
        extra=extra, reset=reset,
    )  # fmt: skip
    return QemuBoard(ctx)


def first_command(make: Callable[[], QemuBoard], command: str) -> tuple[float, int, float]:
    """Seconds from start() to the answer of the first command, QEMU's RSS then, and the seconds
    its save took (0 when it did not save)."""
    b = make()
    started = time.monotonic()
    try:
        b.start()
        if b.shell_kind == "uboot":
            b.uboot.run(command)
        else:
            b.console.run(command)
        return time.monotonic() - started, b.rss() or 0, b.warm.timings.get("save", 0.0)
    finally:
        b.stop()


def measure_board(
    name: str, settings: dict[str, Any], command: str, rounds: int, tmp: Path
) -> dict[str, Any]:
    cache = tmp / f"cache-{name}"
    n = iter(range(1000))

    def make(mode: str) -> Callable[[], QemuBoard]:
        return lambda: board(settings, tmp / f"{name}-{next(n)}", mode, cache)

    cold, miss, hit, again, save = [], [], [], [], []
    cold_rss = hit_rss = 0
    for _ in range(rounds):
        StateCache(cache).clear()
        seconds, cold_rss, _ = first_command(make("off"), command)
        cold.append(seconds)
        seconds, _, saved = first_command(make("on"), command)  # empty cache: boot, then save
        miss.append(seconds)
        save.append(saved)
        seconds, hit_rss, _ = first_command(make("on"), command)
        hit.append(seconds)  # right after the save: its file may still be in writeback
        again.append(first_command(make("on"), command)[0])
    _, disk = StateCache(cache).usage()
    entries = StateCache(cache).entries()  # none when the board is cached off (U-Boot so far)
    StateCache(cache).clear()
    return {
        "cold": statistics.median(cold), "miss": statistics.median(miss), "hit": statistics.median(hit),
        "again": statistics.median(again), "again_all": again, "save": statistics.median(save),
        "cold_all": cold, "miss_all": miss, "hit_all": hit, "disk": disk,
        "stream": entries[0].size if entries else 0, "cold_rss": cold_rss, "hit_rss": hit_rss,
    }  # fmt: skip


def snapshot_restore(images: Images, tmp: Path, rounds: int = 15) -> dict[str, float]:
    b = board(
        {"kernel": str(images.linux_kernel), "initrd": str(images.linux_initrd)},
        tmp / "snap", "off", tmp / "unused", reset="snapshot",
    )  # fmt: skip
    totals, loadvm = [], []
    try:
        b.start()
        for _ in range(rounds):
            started = time.monotonic()
            assert b.restore("snapshot") is None
            totals.append(time.monotonic() - started)
            loadvm.append(b.timings["loadvm"])
    finally:
        b.stop()
    return {"restore": statistics.median(totals), "loadvm": statistics.median(loadvm)}


TESTS = """
import pytest

@pytest.mark.parametrize("n", range({count}))
def test_fresh_board(qemu_vm, n):
    assert qemu_vm.console.run("echo $((40 + 2))").output == "42"
"""

BOARD = """
name: bench
devices:
  qemu_vm:
    driver: qemu
    scope: test
    kernel: {kernel}
    initrd: {initrd}
"""


def pytest_run(args: list[str], cwd: Path) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"pytest {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
        )
    return seconds, result.stdout.strip().splitlines()[-1]


def scope_test(images: Images, tmp: Path, count: int) -> dict[str, float]:
    folder = tmp / "scope-test"
    folder.mkdir()
    (folder / "test_fresh.py").write_text(TESTS.format(count=count))
    (folder / "board.yaml").write_text(BOARD.format(kernel=images.linux_kernel, initrd=images.linux_initrd))
    cache = tmp / "cache-scope"
    base = ["--target=board.yaml", f"--jumpstarter-cache-dir={cache}"]
    off, _ = pytest_run([*base, "--jumpstarter-cache=off"], folder)
    pytest_run([*base, "--jumpstarter-cache=on", "-k", "test_fresh_board and 0"], folder)  # fill the cache
    on, _ = pytest_run([*base, "--jumpstarter-cache=on"], folder)
    one_off, _ = pytest_run([*base, "--jumpstarter-cache=off", "-k", "test_fresh_board and 0"], folder)
    one_on, _ = pytest_run([*base, "--jumpstarter-cache=on", "-k", "test_fresh_board and 0"], folder)
    # Per test: the run's wall time above a one-test run's, over the tests beyond the first.
    return {
        "off_wall": off, "on_wall": on,
        "off_per_test": (off - one_off) / (count - 1), "on_per_test": (on - one_on) / (count - 1),
    }  # fmt: skip


def examples(tmp: Path) -> dict[str, Any]:
    cache = tmp / "cache-examples"
    target = "--target=conftest_examples/qemu-x86_64.yaml"
    args = ["conftest_examples", target, f"--jumpstarter-cache-dir={cache}"]
    first, summary = pytest_run(args, ROOT)
    second, _ = pytest_run(args, ROOT)
    entries, disk = StateCache(cache).usage()
    return {"first": first, "second": second, "summary": summary, "entries": entries, "disk": disk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tests", type=int, default=10)
    parser.add_argument("--skip-suites", action="store_true", help="only the direct measures (1, 2, 5)")
    opts = parser.parse_args()
    images = require_images()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as name:
        tmp = Path(name)
        boards = {
            "linux-x86_64": measure_board(
                "linux",
                {"kernel": str(images.linux_kernel), "initrd": str(images.linux_initrd)},
                "true", opts.rounds, tmp,
            ),
            "uboot-arm64": measure_board(
                "uboot",
                {"arch": "aarch64", "bios": str(images.uboot_arm64), "shell": "uboot", "memory": "512M"},
                "echo ok", opts.rounds, tmp,
            ),
        }  # fmt: skip
        print(f"1. first command of a board, median of {opts.rounds} (start() to the answer):")
        for label, m in boards.items():
            print(
                f"   {label}: cold {m['cold']:.2f}s, cache hit {m['hit']:.2f}s "
                f"(ratio {m['hit'] / m['cold']:.3f}), cache miss {m['miss']:.2f}s "
                f"({m['miss'] / m['cold'] - 1:+.1%} over cold); a later hit {m['again']:.2f}s"
                f" (ratio {m['again'] / m['cold']:.3f})"
            )
            print(
                f"     the save itself (the miss's only extra step): {m['save']:.3f}s, "
                f"{m['save'] / m['cold']:+.1%} of the cold boot"
            )
            print(
                "     all: "
                + ", ".join(
                    f"{k} {[round(x, 2) for x in m[k + '_all']]}" for k in ("cold", "hit", "again", "miss")
                )
            )
        snap = snapshot_restore(images, tmp)
        print(
            f"2. reset: snapshot per test (direct, median of 15): {snap['restore']:.3f}s"
            f" (loadvm {snap['loadvm']:.3f}s)"
        )
        if not opts.skip_suites:
            scope = scope_test(images, tmp, opts.tests)
            print(
                f"3. scope: test, {opts.tests} tests: cache off {scope['off_wall']:.1f}s "
                f"({scope['off_per_test']:.2f}s per test), cache on {scope['on_wall']:.1f}s "
                f"({scope['on_per_test']:.2f}s per test), "
                f"ratio {scope['on_per_test'] / scope['off_per_test']:.3f}"
            )
            ex = examples(tmp)
            print(
                f"4. examples suite ({ex['summary']}): first run {ex['first']:.1f}s, "
                f"second {ex['second']:.1f}s (ratio {ex['second'] / ex['first']:.3f}); "
                f"cache {ex['entries']} entries, {ex['disk'] / mib:.0f} MiB"
            )
        print("5. memory and disk:")
        for label, m in boards.items():
            print(
                f"   {label}: entry {m['stream'] / mib:.1f} MiB stream, {m['disk'] / mib:.1f} MiB on disk; "
                f"QEMU RSS after cold boot {m['cold_rss'] / mib:.0f} MiB, "
                f"after restore {m['hit_rss'] / mib:.0f} MiB"
            )


if __name__ == "__main__":
    main()
