#!/usr/bin/env python3
"""Flasher benchmark: each method against a baseline measured in the same run; prints ratios.

    python bench/flash.py [--rounds 5] [--only qemu-disk,uboot-tftp,dfu]

1. qemu-disk vs ``dd bs=4M conv=fsync`` (also plain ``dd``, ``dd`` + ``cmp``, and ``qemu-img convert``)
   of the same 256 MiB image, for a
   realistic disk image (ext4 with 96 MiB of files) and a worst case (256 MiB of random bytes).
   The flasher's figure includes its read-back verification; the board is off throughout.
2. uboot-tftp end to end (power-cycle, chunks, CRC32, write, read-back compare, reset) on a
   64 MiB random image, vs a bare ``tftpboot`` of the same file on the same board in the same run.
3. dfu against the software device: the protocol's cost per block (DNLOAD + GETSTATUS polling,
   manifestation) over the bare control transfer that carries the same bytes.

Medians (and minimums: the least disturbed run, on a shared machine) of ``--rounds`` interleaved
runs.  Needs the demo images (scripts/build-images) for 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_jumpstarter.driver import DeviceContext

MIB = 1024 * 1024


def median_time(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def defaults(cls: Any) -> dict[str, Any]:
    return {name: s.default for name, s in cls.settings.items() if not s.required}


def make_ext4_image(path: Path, work: Path) -> None:
    """A 256 MiB ext4 image holding 96 MiB of files: what a rootfs image looks like (mostly unused)."""
    tree = work / "tree"
    tree.mkdir()
    for i in range(24):
        (tree / f"blob{i}.bin").write_bytes(os.urandom(3 * MIB))
        (tree / f"text{i}.txt").write_text(f"line of text {i}\n" * 60000)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", str(tree), str(path), "256M"],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)


def bench_qemu_disk(rounds: int, work: Path) -> None:
    from pytest_jumpstarter_flashers.qemu_disk import QemuDiskFlasher
    from pytest_jumpstarter_qemu.board import QemuBoard

    images = {"ext4 rootfs (96 MiB used)": work / "rootfs.img", "random (256 MiB used)": work / "random.img"}
    make_ext4_image(images["ext4 rootfs (96 MiB used)"], work)
    with open(images["random (256 MiB used)"], "wb") as f:
        for _ in range(256):
            f.write(os.urandom(MIB))
    board_dir = work / "board"
    board_dir.mkdir()
    board = QemuBoard(
        DeviceContext(
            name="qemu_vm",
            target="bench",
            settings={
                **defaults(QemuBoard),
                "bios": "/dev/null",
                "autostart": False,
                "disks": {"disk0": "256M"},
            },
            workdir=board_dir,
        )
    )
    board.start()
    try:
        flasher = QemuDiskFlasher(
            DeviceContext(
                name="flasher",
                target="bench",
                settings=QemuDiskFlasher.settings_from({"board": "qemu_vm", "power_on": False}),
                refs={"board": board},
                workdir=work,
            )
        )
        flasher.start()
        print("## qemu-disk vs dd / qemu-img convert, 256 MiB image, board off")
        for label, image in images.items():
            _compare_qemu_disk(label, image, flasher, work, rounds)
    finally:
        board.stop()


def _compare_qemu_disk(label: str, image: Path, flasher: Any, work: Path, rounds: int) -> None:
    dd_out = work / "dd.img"
    qi_out = work / "qemu-img.img"
    commands = {
        "dd": ["dd", f"if={image}", f"of={dd_out}", "bs=4M", "conv=fsync", "status=none"],
        "ddnosync": ["dd", f"if={image}", f"of={dd_out}", "bs=4M", "status=none"],
        "qi": ["qemu-img", "convert", "-f", "raw", "-O", "raw", str(image), str(qi_out)],
    }
    samples: dict[str, list[float]] = {"dd": [], "ddnosync": [], "qi": [], "ddcmp": [], "ours": [], "nv": []}

    def timed(run: Callable[[], Any]) -> float:
        # Flush what the previous contender left dirty first, so nobody pays for another's writeback.
        os.sync()
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    def dd_and_cmp() -> None:
        # Flash and verify the classic way: dd, then cmp the copy against the image.
        subprocess.run(commands["ddnosync"], check=True)
        subprocess.run(["cmp", "-s", str(image), str(dd_out)], check=True)

    results: list[Any] = []
    contenders: list[tuple[str, Callable[[], Any]]] = [
        *(
            (key, lambda command=command: subprocess.run(command, check=True))
            for key, command in commands.items()
        ),
        ("ddcmp", dd_and_cmp),
        ("ours", lambda: results.append(flasher.flash(image))),
        ("nv", lambda: flasher.flash(image, verify=False)),
    ]
    for round_number in range(rounds):
        # Interleaved, and in a rotating order, so background load and cache state hit all alike.
        shift = round_number % len(contenders)
        for key, run in contenders[shift:] + contenders[:shift]:
            samples[key].append(timed(run))
    written = results[-1].bytes_written
    names = {"dd": "dd conv=fsync", "ddnosync": "dd", "qi": "qemu-img convert", "ddcmp": "dd + cmp"}
    for stat_name, stat in (("median", statistics.median), ("min", min)):
        t = {key: stat(values) for key, values in samples.items()}
        baselines = ", ".join(f"{names[k]} {t[k]:.3f}s" for k in names)
        print(
            f"{label} [{stat_name} of {rounds}]: {baselines}; qemu-disk verified {t['ours']:.3f}s "
            f"(wrote {written / MIB:.0f} MiB), unverified {t['nv']:.3f}s"
        )
        ratios = ", ".join(
            f"{names[k]} {t[k] / t['ours']:.2f}x verified / {t[k] / t['nv']:.2f}x unverified" for k in names
        )
        print(f"  ratio baseline time / ours (>1: ours faster): {ratios}")
    dd_out.unlink(missing_ok=True)
    qi_out.unlink(missing_ok=True)


def bench_uboot(rounds: int, work: Path) -> None:
    from pytest_jumpstarter_flashers.uboot import UBootTftpFlasher
    from pytest_jumpstarter_qemu.board import QemuBoard
    from pytest_jumpstarter_qemu.images import Images, images_dir

    uboot = Images(images_dir()).uboot_arm64
    if not uboot.exists():
        print(f"## uboot-tftp: skipped, {uboot} missing (run scripts/build-images)")
        return
    image = work / "random64.img"
    image.write_bytes(os.urandom(64 * MIB))
    board_dir = work / "uboot-board"
    board_dir.mkdir()
    board = QemuBoard(
        DeviceContext(
            name="uboot_vm",
            target="bench",
            settings={
                **defaults(QemuBoard),
                "arch": "aarch64",
                "bios": uboot,
                "shell": "uboot",
                "memory": 512 * MIB,
                "network": {"tftp": True},
                "disks": {"disk0": "128M"},
            },
            workdir=board_dir,
        )
    )
    board.start()
    try:
        flasher = UBootTftpFlasher(
            DeviceContext(
                name="flasher",
                target="bench",
                settings=UBootTftpFlasher.settings_from({"board": "uboot_vm", "ram_size": 384 * MIB}),
                refs={"board": board},
                workdir=work,
            )
        )
        flasher.start()
        flash_times, e2e_times, raw_times = [], [], []
        for _ in range(rounds):
            start = time.perf_counter()
            result = flasher.flash(image)
            e2e_times.append(time.perf_counter() - start)
            flash_times.append(result.duration)
            assert result.verified
            # The baseline: the same file, same board, a bare tftpboot (no CRC, no write, no verify).
            assert board.tftp_root is not None
            staged = board.tftp_root / "raw.bin"
            shutil.copyfile(image, staged)
            flasher.interrupt(10.0)
            flasher.run("setenv ipaddr 10.0.2.15; setenv serverip 10.0.2.2")
            start = time.perf_counter()
            flasher.run("tftpboot 0x40400000 raw.bin")
            raw_times.append(time.perf_counter() - start)
            staged.unlink()
        size = 64
        print(f"## uboot-tftp, 64 MiB random image, verification included ({rounds} rounds)")
        for stat_name, stat in (("median", statistics.median), ("best", min)):
            t_e2e, t_flash, t_raw = (stat(x) for x in (e2e_times, flash_times, raw_times))
            print(
                f"[{stat_name}] flash {size / t_flash:.1f} MiB/s ({t_flash:.2f}s: TFTP, write, read-back, "
                f"CRC32), end to end with power-cycle and reset {size / t_e2e:.1f} MiB/s ({t_e2e:.2f}s); "
                f"bare tftpboot {size / t_raw:.1f} MiB/s ({t_raw:.2f}s)"
            )
            print(
                f"  ratio flash / bare tftpboot throughput: {t_raw / t_flash:.2f}x "
                f"(end to end {t_raw / t_e2e:.2f}x)"
            )
    finally:
        board.stop()


def bench_dfu(rounds: int, work: Path) -> None:
    import usb.core
    from pytest_jumpstarter_flashers.dfu import DfuFlasher
    from pytest_jumpstarter_flashers.testing.dfu_sim import SimulatedDfuBackend, SimulatedDfuDevice

    size = 16 * MIB
    image = work / "firmware.bin"
    image.write_bytes(os.urandom(size))
    device = SimulatedDfuDevice(size=size, transfer_size=4096)
    ctx = DeviceContext(name="dfu", target="bench", settings=DfuFlasher.settings_from({}), workdir=work)
    ctx.extra["usb_backend"] = SimulatedDfuBackend(device)
    flasher = DfuFlasher(ctx)
    flasher.start()
    blocks = size // device.transfer_size
    payload = os.urandom(device.transfer_size)

    def bare() -> None:
        # The same bytes as bare control transfers (the device discards them: state reset after).
        dev = usb.core.find(backend=ctx.extra["usb_backend"])
        for _ in range(blocks):
            dev.ctrl_transfer(0x21, 1, 0, 0, payload, 5000)
            device._next_block = 0
            device.state = 2

    t_bare = median_time(bare, rounds)
    t_flash = median_time(lambda: flasher.flash(image, verify=False), rounds)
    t_verified = median_time(lambda: flasher.flash(image), rounds)
    per_bare = t_bare / blocks * 1e6
    per_flash = t_flash / blocks * 1e6
    print(
        f"## dfu against the software device, {size // MIB} MiB in {blocks} blocks "
        f"of {device.transfer_size} bytes"
    )
    print(
        f"bare DNLOAD transfers {per_bare:.1f} us/block; full protocol (DNLOAD + GETSTATUS + manifestation) "
        f"{per_flash:.1f} us/block, i.e. {per_flash - per_bare:.1f} us/block of protocol overhead "
        f"(ratio {per_flash / per_bare:.2f}x); "
        f"with upload verification {t_verified / blocks * 1e6:.1f} us/block"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="qemu-disk,uboot-tftp,dfu")
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-flash-") as tmp:
        work = Path(tmp)
        print(
            f"# pytest-jumpstarter flasher benchmark "
            f"({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)"
        )
        if "dfu" in chosen:
            (work / "dfu").mkdir()
            bench_dfu(args.rounds, work / "dfu")
        if "qemu-disk" in chosen:
            (work / "qd").mkdir()
            bench_qemu_disk(args.rounds, work / "qd")
        if "uboot-tftp" in chosen:
            (work / "ub").mkdir()
            bench_uboot(args.rounds, work / "ub")
    return 0


if __name__ == "__main__":
    sys.exit(main())
