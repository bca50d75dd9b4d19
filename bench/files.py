#!/usr/bin/env python3
"""SSH against the console on the demo board: round trip, and copy throughput per channel against scp.

    JUMPSTARTER_IMAGES=... /work/tools/heavy .venv/bin/python bench/files.py [--mib 64] [--console-mib 4]

One invocation boots one demo board (with dropbear) and measures, in the same run:
- ``ssh.run("true")`` against ``console.run("true")`` (median of 20);
- put and get of a random file over each channel of the ``files`` driver (verified on the board, so
  the figures include the board's sha256sum), and ``scp`` by hand (OpenSSH, same board, same key).
Goals: SSH copy >= 0.9x scp; console fallback >= 100 KiB/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ssh"))

from pytest_jumpstarter_qemu.images import require_images
from ssh_support import board, files_on, ssh_on


def median_ms(fn: object, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64, help="file size for ssh, http and scp")
    parser.add_argument("--console-mib", type=int, default=4, help="file size for the console channel")
    args = parser.parse_args()
    images = require_images()
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        work = Path(tmp)
        qemu = board(images, work / "board")
        qemu.start()
        ssh = ssh_on(qemu, work / "ssh")
        try:
            ssh.start()
            rt_ssh = median_ms(lambda: ssh.run("true").check(), 20)
            rt_console = median_ms(lambda: qemu.console.run("true").check(), 20)
            print(f"round trip: ssh.run('true') {rt_ssh:.1f} ms, console.run('true') {rt_console:.1f} ms")
            rows = []
            for channel, mib in (("ssh", args.mib), ("http", args.mib), ("console", args.console_mib)):
                data = work / f"{channel}.bin"
                data.write_bytes(os.urandom(mib * 1024 * 1024))
                files = files_on(
                    qemu, work / f"files-{channel}", ssh if channel == "ssh" else None, channel=channel
                )
                files.start()
                try:
                    put = files.put(data, "/tmp/bench.bin")
                    get = files.get("/tmp/bench.bin", work / "back.bin")
                finally:
                    files.stop()
                ssh.run("rm -f /tmp/bench.bin")
                rows.append((channel, mib, put.duration, get.duration))
            data = work / "ssh.bin"
            # scp as a person types it: its own connection (no master), the same key and known_hosts.
            e = ssh._require().endpoint
            known = f"UserKnownHostsFile={work}/ssh/known_hosts"
            scp = ["scp", "-q", "-P", str(e.port), "-i", str(ssh.key), "-o", known,
                   "-o", f"HostKeyAlias={e.alias}", "-o", "BatchMode=yes"]  # fmt: skip
            target = f"{e.user}@{e.host}:/tmp/bench.bin"
            start = time.perf_counter()
            subprocess.run([*scp, str(data), target], check=True)
            scp_put = time.perf_counter() - start
            start = time.perf_counter()
            subprocess.run([*scp, target, str(work / "back.bin")], check=True)
            scp_get = time.perf_counter() - start
            rows.append(("scp by hand", args.mib, scp_put, scp_get))
            print(f"{'channel':12s} {'MiB':>5s} {'put MiB/s':>10s} {'get MiB/s':>10s}")
            for name, mib, p, g in rows:
                print(f"{name:12s} {mib:5d} {mib / p:10.2f} {mib / g:10.2f}")
            ssh_row, console_row = rows[0], rows[2]
            kib = console_row[1] * 1024
            print(
                f"ssh vs scp: put {scp_put / ssh_row[2]:.2f}x, get {scp_get / ssh_row[3]:.2f}x (goal 0.9x);"
                f" console {kib / console_row[2]:.0f} KiB/s put, {kib / console_row[3]:.0f} KiB/s get"
                " (goal >= 100 KiB/s)"
            )
        finally:
            ssh.stop()
            qemu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
