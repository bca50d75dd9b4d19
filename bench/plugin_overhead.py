"""Per-test and start-up overhead of the pytest-jumpstarter plugin, against plain pytest in the same run.

Runs, as subprocesses, alternating and several times each (the minimum counts):

- 500 trivial tests that use the ``console`` fixture of a session-scoped ``loop://`` serial device,
  with the plugin and a target;
- the same 500 tests with ``-p no:jumpstarter`` and a plain fixture named ``console`` instead;
- collection of one test with a target of 20 devices, against collection with the plugin disabled.

Usage: python bench/plugin_overhead.py [--tests 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PLAIN_CONFTEST = """
import pytest

class Device:
    pass

@pytest.fixture(scope="session")
def _device():
    return Device()

@pytest.fixture
def console(_device):
    return _device
"""

BOARD = """
name: bench
devices:
  console: {driver: serial, url: 'loop://', scope: session}
"""


#: Blocks the driver families other than serial (each is registered as plugin "jumpstarter-drivers-<name>").
ONLY_SERIAL = [a for f in ("qemu", "flashers", "network") for a in ("-p", f"no:jumpstarter-drivers-{f}")]


def twenty_devices() -> str:
    lines = ["name: bench-20", "labels: {arch: x86_64}", "devices:"]
    lines.append("  console: {driver: serial, url: 'loop://', scope: session}")
    lines += [
        f"  uart{i}: {{driver: serial, url: 'loop://', role: uart{i}, baudrate: 9600}}" for i in range(19)
    ]
    return "\n".join(lines) + "\n"


def tests(count: int) -> str:
    return "".join(f"def test_{i}(console):\n    assert console is not None\n\n" for i in range(count))


def run(folder: Path, *args: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one pytest process; CPU time (user + system) is steadier on a
    busy machine, where other processes share the cores."""
    env = {k: v for k, v in os.environ.items() if k != "JUMPSTARTER_TARGET"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
        killer = threading.Timer(600, proc.kill)  # the deadline of a run that hangs
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            out.seek(0)
            raise SystemExit(
                f"{' '.join(command)} (in {folder}) failed:\n{out.read().decode(errors='replace')}"
            )
    return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    n = options.tests
    with tempfile.TemporaryDirectory(prefix="jumpstarter-bench-") as tmp:
        root = Path(tmp)
        plugin, plain, startup = root / "plugin", root / "plain", root / "startup"
        for folder in (plugin, plain, startup):
            folder.mkdir()
        (plugin / "board.yaml").write_text(BOARD)
        (plugin / "test_many.py").write_text(tests(n))
        (plain / "conftest.py").write_text(PLAIN_CONFTEST)
        (plain / "test_many.py").write_text(tests(n))
        (startup / "twenty.yaml").write_text(twenty_devices())
        (startup / "test_one.py").write_text(tests(1))

        runs: dict[str, list[tuple[float, float]]] = {
            k: [] for k in ("with", "without", "c20", "c20s", "cnone", "coff")
        }
        for _ in range(options.rounds):
            runs["with"].append(run(plugin, "--target=board.yaml"))
            runs["without"].append(run(plain, "-p", "no:jumpstarter"))
            runs["c20"].append(run(startup, "--collect-only", "--target=twenty.yaml"))
            runs["c20s"].append(run(startup, "--collect-only", "--target=twenty.yaml", *ONLY_SERIAL))
            runs["cnone"].append(run(startup, "--collect-only"))
            runs["coff"].append(run(startup, "--collect-only", "-p", "no:jumpstarter"))

    print(
        f"python {sys.version.split()[0]}, {options.rounds} rounds, minimum of each; CPU = user + system time"
    )
    for index, what in ((0, "CPU"), (1, "wall")):
        w, b = (min(r[index] for r in runs[k]) for k in ("with", "without"))
        c20, c20s, cnone, coff = (min(r[index] for r in runs[k]) for k in ("c20", "c20s", "cnone", "coff"))
        print(f"--- {what} time")
        print(f"{n} device tests, plugin + session loop:// device : {w:.3f} s")
        print(f"{n} tests, -p no:jumpstarter + plain fixture     : {b:.3f} s")
        print(f"per-test overhead: {(w - b) / n * 1000:.3f} ms  (ratio {w / b:.2f}x; goal <= 1 ms)")
        print(f"collect 1 test, 20-device target        : {c20 * 1000:.0f} ms")
        print(f"  same, other driver families blocked   : {c20s * 1000:.0f} ms")
        print(f"collect 1 test, plugin on, no target    : {cnone * 1000:.0f} ms")
        print(f"collect 1 test, -p no:jumpstarter       : {coff * 1000:.0f} ms")
        print(
            f"start-up cost of a 20-device target: {(c20 - coff) * 1000:.1f} ms vs plugin off "
            f"(ratio {c20 / coff:.2f}x; goal <= 50 ms); plugin without target: {(cnone - coff) * 1000:.1f} ms"
        )
        print(
            "  of which importing the other driver families (qemu, flashers, network): "
            f"{(c20 - c20s) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
