"""QEMU board benchmark: our driver against raw qemu-system + pexpect and labgrid's QEMUDriver, side by side.

    python bench/qemu_boot.py [--rounds 5] [--bytes 1000000] [--labgrid-bytes 200000] [--no-labgrid]

Needs the demo images (scripts/build-images).  Installs labgrid from PyPI into its own venv
(``~/.cache/pytest-jumpstarter/labgrid-venv``) and drives it from a subprocess.  Prints one table;
every figure is a median over rounds run interleaved (boot ratios: the median of per-round ratios),
and every goal is a ratio against a baseline measured in the same invocation.

Measured:

1. boot to the shell prompt: through the plugin's fixture (a test's setup time) and our QemuBoard.on(),
   vs raw qemu-system + pexpect vs labgrid QEMUDriver;
2. console round trip (send one character, expect the guest kernel's echo), and the console alone
   against a local TCP echo peer (ours vs labgrid's SerialDriver over raw TCP);
3. throughput through expect: the same guest output (``yes ... | head -c N``), and the console
   alone on a local TCP producer (where the guest's UART does not set the pace);
4. CPU of the test process while expect waits 10 s for output that never comes;
5. (``--shells``) a shell command's round trip through ``run("true")`` next to a raw send/expect of the
   same command's prompt on the same console: Linux (the demo x86_64 board) and U-Boot (the demo arm64 board).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import serial
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import require_images

from pytest_jumpstarter.console import Console, SerialTransport
from pytest_jumpstarter.driver import DeviceContext

HERE = Path(__file__).resolve().parent
LABGRID_VERSION = "26.0.1"
LABGRID_VENV = Path("~/.cache/pytest-jumpstarter/labgrid-venv").expanduser()
APPEND = "console=ttyS0,115200 quiet loglevel=3 panic=-1"
PROMPT = r"[#$] "
LINE = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def ensure_labgrid() -> Path | None:
    python = LABGRID_VENV / "bin" / "python"
    probe = [str(python), "-c", f"import labgrid, sys; sys.exit(labgrid.__version__ != {LABGRID_VERSION!r})"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing labgrid {LABGRID_VERSION} into {LABGRID_VENV} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(LABGRID_VENV)], check=True)
    result = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"labgrid=={LABGRID_VERSION}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        print(f"labgrid could not be installed: {result.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return python


def labgrid(python: Path, *args: object, timeout: float = 1800) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), str(HERE / "_labgrid_probe.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            data: dict[str, Any] = json.loads(line[7:])
            return data
    raise RuntimeError(f"labgrid probe failed ({result.returncode}):\n{result.stderr[-2000:]}")


# --- ours ---------------------------------------------------------------------------------------


def our_board(kernel: Path, initrd: Path, workdir: Path) -> QemuBoard:
    settings = {
        "kernel": str(kernel),
        "initrd": str(initrd),
        "append": APPEND,
        "autostart": False,
        "boot_timeout": 120.0,
        "memory": 256 * 1024 * 1024,
    }
    typed = QemuBoard.settings_from(settings, workdir)
    return QemuBoard(DeviceContext(name="qemu_vm", target="bench", settings=typed, workdir=workdir))


def our_boot(board: QemuBoard) -> float:
    start = time.monotonic()
    board.on()
    return time.monotonic() - start


def char_roundtrips(send: Callable[[str], object], expect: Callable[[str], object], n: int = 30) -> float:
    trips = []
    for _ in range(n):
        t = time.perf_counter()
        send("a")
        expect("a")
        trips.append(time.perf_counter() - t)
    return statistics.median(trips)


def our_session(board: QemuBoard, nbytes: int) -> dict[str, float]:
    console = board.console
    console.sendline("cat")
    console.expect("cat\r+\n")
    out = {"roundtrip": char_roundtrips(console.send, lambda s: console.expect(s, timeout=10))}
    console.send("\x03")
    console.expect(PROMPT)
    start = time.monotonic()
    console.sendline(f'yes {LINE} | head -c {nbytes}; echo; echo EN""D')
    console.expect("END\r\n", timeout=1800)
    out["throughput_seconds"] = time.monotonic() - start
    console.expect(PROMPT)
    cpu, wall = time.process_time(), time.monotonic()
    with contextlib.suppress(pexpect.TIMEOUT):
        console.expect("NEVER-PRINTED", timeout=10)
    out["idle_cpu"] = (time.process_time() - cpu) / (time.monotonic() - wall)
    return out


def trips(action: Callable[[], object], n: int) -> float:
    seconds = []
    for _ in range(n):
        t = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds)


def shell_trips(board: QemuBoard, prompt: str, n: int, rounds: int) -> dict[str, float]:
    """Median seconds of ``run("true")`` and of a raw ``sendline("true")`` + expect(prompt), interleaved."""
    console = board.console
    shell = console.shell

    def raw() -> None:
        console.sendline("true")
        console.expect(prompt, timeout=10)

    shell.run("true")  # warm up (and leave the console just past a prompt)
    runs, raws = [], []
    for _ in range(rounds):
        runs.append(trips(lambda: shell.run("true", timeout=10), n))
        raws.append(trips(raw, n))
    return {"run": statistics.median(runs), "raw": statistics.median(raws)}


def shells_bench(kernel: Path, initrd: Path, n: int, rounds: int) -> list[tuple[str, str, str, str, str]]:
    from pytest_jumpstarter_qemu.images import UBOOT_ARM64

    images = require_images(UBOOT_ARM64)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-shells-") as tmp:
        linux = our_board(kernel, initrd, Path(tmp) / "linux")
        linux.start()
        try:
            linux.on()
            got = shell_trips(linux, PROMPT, n, rounds)
        finally:
            linux.stop()
        rows.append(("Linux run('true') round trip", ms(got["run"]), f"raw send/expect {ms(got['raw'])}",
                     f"{got['run'] / got['raw']:.2f}x", "not slower than before"))  # fmt: skip
        settings = {
            "arch": "aarch64",
            "bios": str(images.uboot_arm64),
            "shell": "uboot",
            "memory": 512 * 1024 * 1024,
        }
        workdir = Path(tmp) / "uboot"
        typed = QemuBoard.settings_from(settings, workdir)
        uboot = QemuBoard(DeviceContext(name="uboot", target="bench", settings=typed, workdir=workdir))
        uboot.start()
        try:
            got = shell_trips(uboot, "\r\n=> ", n, rounds)
        finally:
            uboot.stop()
        rows.append(("U-Boot run('true') round trip", ms(got["run"]), f"raw send/expect {ms(got['raw'])}",
                     f"{got['run'] / got['raw']:.2f}x", "<= 2x raw"))  # fmt: skip
    return rows


FIXTURE_CONFTEST = """
import time, pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    start = time.monotonic()
    yield
    with open("setup-seconds.txt", "a") as f:
        f.write(f"{time.monotonic() - start}\\n")
"""


def fixture_boot(kernel: Path, initrd: Path, folder: Path) -> float:
    """Boot through the plugin: the setup time of a test asking for ``qemu_vm`` (pytest startup excluded)."""
    folder.mkdir(exist_ok=True)
    (folder / "board.yaml").write_text(
        "name: bench\ndevices:\n  qemu_vm:\n    driver: qemu\n"
        f"    kernel: {kernel}\n    initrd: {initrd}\n    append: {APPEND}\n    boot_timeout: 120\n"
    )
    (folder / "conftest.py").write_text(FIXTURE_CONFTEST)
    (folder / "test_boot.py").write_text("def test_boot(qemu_vm):\n    pass\n")
    out = folder / "setup-seconds.txt"
    out.unlink(missing_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--target=board.yaml",
            "test_boot.py",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pytest through the plugin failed:\n{result.stdout[-2000:]}")
    return float(out.read_text().split()[0])


# --- raw qemu-system + pexpect ------------------------------------------------------------------


def raw_boot(kernel: Path, initrd: Path) -> float:
    args = ["-nodefaults", "-display", "none", "-monitor", "none", "-machine", "q35", "-accel", "tcg",
            "-cpu", "max", "-smp", "1", "-m", "256M", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", APPEND, "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
            "-serial", "stdio"]  # fmt: skip
    start = time.monotonic()
    child = pexpect.spawn("qemu-system-x86_64", args, timeout=120, encoding="utf-8")
    try:
        child.expect(PROMPT)
        return time.monotonic() - start
    finally:
        child.terminate(force=True)


# --- the console alone, against a local TCP peer ------------------------------------------------


def producer(ready: threading.Event, port_box: list[int], stop: threading.Event) -> None:
    """Echo each line back; on ``GO N`` send N bytes of lines and ``END``.  Serves one client at a time."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port_box.append(server.getsockname()[1])
        ready.set()
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                buffered = b""
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buffered += data
                    while b"\n" in buffered:
                        line, buffered = buffered.split(b"\n", 1)
                        line = line.rstrip(b"\r")
                        if line.startswith(b"GO "):
                            n = int(line[3:])
                            block = (LINE + "\r\n").encode() * 1024
                            sent = 0
                            while sent < n:
                                piece = block[: n - sent]
                                conn.sendall(piece)
                                sent += len(piece)
                            conn.sendall(b"\r\nEND\r\n")
                        else:
                            conn.sendall(line + b"\r\n")


def start_producer() -> tuple[int, threading.Event]:
    # In a process of its own, so producing does not steal the measured process's CPU or GIL.
    proc = subprocess.Popen(
        [sys.executable, __file__, "--producer"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    stop = threading.Event()

    def reaper() -> None:
        stop.wait()
        proc.kill()
        proc.wait()

    threading.Thread(target=reaper, daemon=True).start()
    return port, stop


def our_serial(port: int, nbytes: int) -> dict[str, float]:
    console = Console(
        SerialTransport(serial.serial_for_url(f"socket://127.0.0.1:{port}")), device="tcp", timeout=30
    )
    try:
        trips = []
        for i in range(30):
            t = time.perf_counter()
            console.sendline(f"ping{i}x")
            console.expect_exact(f"ping{i}x")
            trips.append(time.perf_counter() - t)
        start = time.monotonic()
        console.sendline(f"GO {nbytes}")
        console.expect("END\r\n", timeout=600)
        return {"roundtrip": statistics.median(trips), "throughput_seconds": time.monotonic() - start}
    finally:
        console.close()


# --- report -------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1024:.0f} KiB/s"


def boot_rows(boots: dict[str, list[float]], launches: list[float]) -> list[tuple[str, str, str, str, str]]:
    med = {k: statistics.median(v) for k, v in boots.items() if v}

    def paired(a: str, b: str) -> str:
        return f"{statistics.median(x / y for x, y in zip(boots[a], boots[b], strict=True)):.2f}x"

    rows: list[tuple[str, str, str, str, str]] = []
    boot = "boot to prompt (median)"
    rows.append((boot + ", fixture", f"{med['fixture']:.2f} s", f"raw qemu+pexpect {med['raw']:.2f} s",
                 paired("fixture", "raw"), "<= 1.10x"))  # fmt: skip
    rows.append((boot + ", driver", f"{med['ours']:.2f} s", f"raw qemu+pexpect {med['raw']:.2f} s",
                 paired("ours", "raw"), "<= 1.10x"))  # fmt: skip
    if "labgrid" in med:
        rows.append((boot + ", fixture", f"{med['fixture']:.2f} s",
                     f"labgrid QEMUDriver {med['labgrid']:.2f} s",
                     paired("fixture", "labgrid"), "<= 1.00x"))  # fmt: skip
        rows.append((boot + ", driver", f"{med['ours']:.2f} s", f"labgrid QEMUDriver {med['labgrid']:.2f} s",
                     paired("ours", "labgrid"), "<= 1.00x"))  # fmt: skip
    share = statistics.median(x / y for x, y in zip(launches, boots["ours"], strict=True))
    rows.append(("our launch, QEMU start to guest running", ms(statistics.median(launches)), "-",
                 f"{share * 100:.1f}% of boot", ""))  # fmt: skip
    return rows


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    header = ("measure", "ours", "baseline", "ratio", "goal")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    print()
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bytes", type=int, default=1_000_000, help="guest output for our throughput")
    parser.add_argument(
        "--labgrid-bytes", type=int, default=200_000, help="the same, for labgrid (it is slow)"
    )
    parser.add_argument("--tcp-bytes", type=int, default=8_000_000, help="local producer output for ours")
    parser.add_argument("--no-labgrid", action="store_true")
    parser.add_argument("--boot-only", action="store_true", help="measure boots only (sections 2-4 skipped)")
    parser.add_argument("--shells", action="store_true", help="measure shell round trips only (section 5)")
    parser.add_argument("--trips", type=int, default=30, help="round trips per round (--shells)")
    parser.add_argument("--producer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.producer:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: go with the benchmark
        box: list[int] = []
        ready, stop = threading.Event(), threading.Event()
        threading.Thread(target=producer, args=(ready, box, stop), daemon=True).start()
        ready.wait(10)
        print(box[0], flush=True)
        stop.wait()  # until the benchmark kills us
        return 0

    images = require_images()
    kernel, initrd = images.linux_kernel, images.linux_initrd
    if args.shells:
        print(f"shell round trips: {args.rounds} rounds of {args.trips}; load {os.getloadavg()[0]:.2f}")
        print_table(shells_bench(kernel, initrd, args.trips, args.rounds))
        return 0
    lg = None if args.no_labgrid else ensure_labgrid()
    print(f"QEMU board benchmark: {args.rounds} rounds, interleaved; load average {os.getloadavg()[0]:.2f}")

    boots: dict[str, list[float]] = {"fixture": [], "ours": [], "raw": [], "labgrid": []}
    launches: list[float] = []  # our fixed cost: QEMU started paused, console + QMP connected, cont
    with tempfile.TemporaryDirectory(prefix="bench-qemu-") as tmp:
        board = our_board(kernel, initrd, Path(tmp))
        board.start()
        try:

            def ours_once() -> float:
                seconds = our_boot(board)
                launches.append(board.timings["launch"])
                board.off()
                return seconds

            runners: dict[str, Callable[[], float]] = {
                "fixture": lambda: fixture_boot(kernel, initrd, Path(tmp) / "plugin"),
                "ours": ours_once,
                "raw": lambda: raw_boot(kernel, initrd),
            }
            if lg is not None:
                runners["labgrid"] = lambda: labgrid(lg, "qemu", kernel, initrd, APPEND, 1, 0)["boot"][0]
            names = list(runners)
            for i in range(args.rounds):
                # A different order each round, so that a load change on this shared machine does not
                # always hit the same runner; ratios are then taken per round (paired), then the median.
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    boots[name].append(runners[name]())
                print(f"  round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in boots.items() if v))
            if not args.boot_only:
                board.on()
                ours = our_session(board, args.bytes)
                ours_small = our_session(board, args.labgrid_bytes) if lg is not None else None
        finally:
            board.stop()
    if args.boot_only:
        print_table(boot_rows(boots, launches))
        return 0
    lg_session = (
        labgrid(lg, "qemu", kernel, initrd, APPEND, 1, args.labgrid_bytes) if lg is not None else None
    )

    port, stop = start_producer()
    try:
        ours_tcp = our_serial(port, args.tcp_bytes)
        ours_tcp_small = our_serial(port, args.labgrid_bytes)
        lg_tcp = labgrid(lg, "serial", port, args.labgrid_bytes) if lg is not None else None
    finally:
        stop.set()

    n, small, tcp = args.bytes, args.labgrid_bytes, args.tcp_bytes
    secs = "throughput_seconds"
    rows = boot_rows(boots, launches)
    lg_trip = f"labgrid {ms(lg_session['roundtrip'])}" if lg_session else "-"
    rows.append(("round trip, guest tty echo", ms(ours["roundtrip"]), lg_trip, "", ""))
    lg_trip = f"labgrid SerialDriver {ms(lg_tcp['roundtrip'])}" if lg_tcp else "-"
    faster = f"{lg_tcp['roundtrip'] / ours_tcp['roundtrip']:.0f}x faster" if lg_tcp else ""
    rows.append(
        ("round trip, console alone (TCP echo)", ms(ours_tcp["roundtrip"]), lg_trip, faster, "<= 2 ms")
    )
    rows.append((f"throughput, guest output {n} B", rate(n, ours[secs]), "-", "", ""))
    if lg_session and ours_small:
        ratio = lg_session[secs] / ours_small[secs]
        rows.append((f"throughput, guest output {small} B", rate(small, ours_small[secs]),
                     f"labgrid QEMUDriver {rate(small, lg_session[secs])}", f"{ratio:.1f}x",
                     "(guest UART bound)"))  # fmt: skip
    rows.append((f"throughput, console alone {tcp} B", rate(tcp, ours_tcp[secs]), "-", "", ""))
    if lg_tcp:
        ratio = lg_tcp[secs] / ours_tcp_small[secs]
        rows.append((f"throughput, console alone {small} B", rate(small, ours_tcp_small[secs]),
                     f"labgrid SerialDriver {rate(small, lg_tcp[secs])}", f"{ratio:.0f}x",
                     ">= 20x"))  # fmt: skip
    lg_cpu = f"labgrid {lg_session['idle_cpu'] * 100:.2f}% core" if lg_session else "-"
    rows.append(("CPU while expect waits 10 s", f"{ours['idle_cpu'] * 100:.2f}% core", lg_cpu, "", "<= 5%"))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
