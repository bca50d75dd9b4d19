"""Labgrid's side of bench/qemu_boot.py: runs under the labgrid venv, prints one JSON object.

    python _labgrid_probe.py qemu KERNEL INITRD APPEND ROUNDS THROUGHPUT_BYTES  (0 bytes: boots only)
    python _labgrid_probe.py serial PORT THROUGHPUT_BYTES

Not part of the package (it imports labgrid, which pytest-jumpstarter does not depend on).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import yaml
from labgrid import Environment

PROMPT = r"[#$] "
LINE = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def environment(config: dict) -> Environment:
    handle, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(handle, "w") as f:
        yaml.safe_dump(config, f)
    try:
        return Environment(path)
    finally:
        os.unlink(path)


def qemu(kernel: str, initrd: str, append: str, rounds: int, nbytes: int) -> dict:
    env = environment(
        {
            "targets": {
                "main": {
                    "drivers": {
                        "QEMUDriver": {
                            "qemu_bin": "qemu",
                            "machine": "q35",
                            "cpu": "max",
                            "memory": "256M",
                            "kernel": "kernel",
                            "boot_args": append,
                            "extra_args": f"-nodefaults -accel tcg -smp 1 -initrd {initrd}",
                            "display": "fb-headless",
                            "nic": "user,model=virtio-net-pci",
                        }
                    }
                }
            },
            "tools": {"qemu": "/usr/bin/qemu-system-x86_64"},
            "images": {"kernel": kernel},
        }
    )
    target = env.get_target("main")
    driver = target.get_driver("QEMUDriver")
    out: dict = {"boot": []}
    try:
        for i in range(rounds):
            start = time.monotonic()
            driver.on()
            driver.expect(PROMPT, timeout=120)
            out["boot"].append(time.monotonic() - start)
            if i < rounds - 1:
                driver.off()
        if not nbytes:
            return out
        # Round trip: the guest kernel's tty echo of one character (cat in canonical mode).
        driver.sendline("cat")
        driver.expect("cat\r+\n", timeout=30)
        trips = []
        for _ in range(30):
            t = time.perf_counter()
            driver._expect.send("a")
            driver.expect("a", timeout=10)
            trips.append(time.perf_counter() - t)
        driver.sendcontrol("c")
        driver.expect(PROMPT, timeout=30)
        out["roundtrip"] = statistics.median(trips)
        # Throughput: the same guest output as ours, through labgrid's expect.
        start = time.monotonic()
        driver.sendline(f'yes {LINE} | head -c {nbytes}; echo; echo EN""D')
        driver.expect("END\r\n", timeout=1800)
        out["throughput_seconds"] = time.monotonic() - start
        driver.expect(PROMPT, timeout=30)
        # CPU of this process while expect waits for output that never comes.
        cpu, wall = time.process_time(), time.monotonic()
        with contextlib.suppress(Exception):
            driver.expect("NEVER-PRINTED", timeout=10)
        out["idle_cpu"] = (time.process_time() - cpu) / (time.monotonic() - wall)
    finally:
        if driver.status:
            driver.off()
    return out


def serial(port: int, nbytes: int) -> dict:
    env = environment(
        {
            "targets": {
                "main": {
                    "resources": {
                        "NetworkSerialPort": {"host": "127.0.0.1", "port": port, "protocol": "raw"}
                    },
                    "drivers": {"SerialDriver": {}},
                }
            }
        }
    )
    driver = env.get_target("main").get_driver("SerialDriver")
    trips = []
    for i in range(30):
        t = time.perf_counter()
        driver.sendline(f"ping{i}x")
        driver.expect(f"ping{i}x", timeout=10)
        trips.append(time.perf_counter() - t)
    start = time.monotonic()
    driver.sendline(f"GO {nbytes}")
    driver.expect("END\r\n", timeout=1800)
    seconds = time.monotonic() - start
    return {"roundtrip": statistics.median(trips), "throughput_seconds": seconds}


def main() -> None:
    mode = sys.argv[1]
    if mode == "qemu":
        kernel, initrd, append, rounds, nbytes = sys.argv[2:7]
        result = qemu(kernel, initrd, append, int(rounds), int(nbytes))
    else:
        port, nbytes = sys.argv[2:4]
        result = serial(int(port), int(nbytes))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
