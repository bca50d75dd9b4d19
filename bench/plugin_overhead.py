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


def twenty_devices() -> str:
    lines = ["name: bench-20", "labels: {arch: x86_64}", "devices:"]
    lines.append("  console: {driver: serial, url: 'loop://', scope: session}")
    lines += [
        f"  uart{i}: {{driver: serial, url: 'loop://', role: uart{i}, baudrate: 9600}}" for i in range(19)
    ]
    return "\n".join(lines) + "\n"


def tests(count: int) -> str:
    return "".join(f"def test_{i}(console):\n    assert console is not None\n\n" for i in range(count))


def run(folder: Path, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "JUMPSTARTER_TARGET"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} (in {folder}) failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


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

        with_plugin, without = [], []
        collect_20, collect_none, collect_off = [], [], []
        for _ in range(options.rounds):
            with_plugin.append(run(plugin, "--target=board.yaml"))
            without.append(run(plain, "-p", "no:jumpstarter"))
            collect_20.append(run(startup, "--collect-only", "--target=twenty.yaml"))
            collect_none.append(run(startup, "--collect-only"))
            collect_off.append(run(startup, "--collect-only", "-p", "no:jumpstarter"))

    w, b = min(with_plugin), min(without)
    per_test_ms = (w - b) / n * 1000
    c20, cnone, coff = min(collect_20), min(collect_none), min(collect_off)
    print(f"python {sys.version.split()[0]}, {options.rounds} rounds, minimum of each")
    print(f"{n} device tests, plugin + session loop:// device : {w:.3f} s")
    print(f"{n} tests, -p no:jumpstarter + plain fixture     : {b:.3f} s")
    print(f"per-test overhead: {per_test_ms:.3f} ms  (ratio {w / b:.2f}x; goal <= 1 ms)")
    print(f"collect 1 test, 20-device target        : {c20 * 1000:.0f} ms")
    print(f"collect 1 test, plugin on, no target    : {cnone * 1000:.0f} ms")
    print(f"collect 1 test, -p no:jumpstarter       : {coff * 1000:.0f} ms")
    print(
        f"start-up cost of a 20-device target: {(c20 - coff) * 1000:.1f} ms vs plugin off "
        f"(ratio {c20 / coff:.2f}x; goal <= 50 ms); plugin without target: {(cnone - coff) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
