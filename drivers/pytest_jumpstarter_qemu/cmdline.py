"""The qemu-system command line: a pure function of a board's settings and its per-run files.

No process, no file system: :func:`command_line` is unit-tested without QEMU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import QemuConfig

#: The drive that holds the RAM and device state of ``reset: snapshot``.
STATE_DRIVE = "jumpstarter-state"


@dataclass(frozen=True)
class DiskFile:
    """A disk as the VM sees it at this launch."""

    name: str
    format: str
    path: Path


@dataclass(frozen=True, kw_only=True)
class RunFiles:
    """What one run of a board adds to its settings: its name and the files made for it."""

    name: str  # -name: "target/device"
    disks: Sequence[DiskFile] = ()
    tftp_root: Path | None = None
    state_drive: Path | None = None


def command_line(config: QemuConfig, run: RunFiles, accel: str = "tcg") -> list[str]:
    """The qemu-system argv, paused (``-S``), without the console/QMP sockets (see :func:`socket_args`)."""
    defaults = config.defaults
    cpu = config.cpu or ("host" if accel == "kvm" else defaults.cpu)
    memory_mib = max(1, config.memory // (1024 * 1024))
    cmd = [config.executable, "-nodefaults", "-display", "none", "-monitor", "none", "-S", "-name", run.name]
    if config.machine_type:
        cmd += ["-machine", config.machine_type]
    tb_size = config.tb_size // (1024 * 1024)
    # TCG's translation cache defaults to 1 GiB and, unflushed, grows with every reboot.
    cmd += ["-accel", f"tcg,tb-size={tb_size}" if accel == "tcg" and tb_size else accel]
    if cpu:
        cmd += ["-cpu", cpu]
    cmd += ["-smp", str(config.smp), "-m", f"{memory_mib}M"]
    if config.kernel:
        append = config.append
        if append is None:
            append = f"console={defaults.tty},115200 quiet loglevel=3 panic=-1"
        cmd += ["-kernel", str(config.kernel), "-append", append]
    if config.initrd:
        cmd += ["-initrd", str(config.initrd)]
    if config.dtb:
        cmd += ["-dtb", str(config.dtb)]
    if config.bios:
        cmd += ["-bios", str(config.bios)]
    network = config.user_network
    if network is not None:
        netdev = "user,id=net0"
        if run.tftp_root is not None:
            netdev += f",tftp={run.tftp_root}"
        for port in network.forwards.values():
            netdev += f",hostfwd=tcp:127.0.0.1:0-:{port}"
        model = network.model or f"virtio-net-{defaults.bus}"
        cmd += ["-netdev", netdev, "-device", f"{model},netdev=net0"]
    if run.state_drive is not None:
        # First of the drives: savevm puts the RAM and device state into the first drive that
        # can hold snapshots.  Not attached to the guest, so it never sees it.
        # cache=unsafe: a per-run scratch file needs no flushes (savevm ~3x faster).
        cmd += ["-drive", f"if=none,id={STATE_DRIVE},format=qcow2,cache=unsafe,file={run.state_drive}"]
    for disk in run.disks:
        cmd += ["-drive", f"if=none,id=disk-{disk.name},format={disk.format},file={disk.path}",
                "-device", f"virtio-blk-{defaults.bus},drive=disk-{disk.name}"]  # fmt: skip
    if config.display:
        from .screen import display_args

        cmd += display_args(defaults.bus)
    cmd += config.extra_args
    return cmd


def socket_args(console: Path, qmp: Path) -> list[str]:
    """Connect the first serial port and QMP to unix sockets we listen on (QEMU is the client)."""
    return ["-chardev", f"socket,id=console0,path={console}", "-serial", "chardev:console0",
            "-qmp", f"unix:{qmp}"]  # fmt: skip
