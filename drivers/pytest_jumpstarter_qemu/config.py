"""A QEMU board's settings: the typed declaration (:class:`QemuSettings`, the board's ``Driver`` type
parameter) and the checks between settings.

The plugin's loader coerces a target file's values into it (nested ``disks`` and ``network`` are
dataclasses of their own, with short forms), so the board and its parts read typed fields, and a
default is written only here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pytest_jumpstarter.capabilities import Addressable, Network, TftpHost
from pytest_jumpstarter.capabilities import UserNetwork as UserNetworkPart
from pytest_jumpstarter.settings import setting
from pytest_jumpstarter.shell_settings import ShellSettings, check_shell

from .disks import DISK_NAME, Disk, DiskSettings, disk_shorthand, disks_shorthand
from .network import UserNetwork, network_shorthand


@dataclass(frozen=True)
class ArchDefaults:
    """What an architecture gets unless the settings say otherwise."""

    machine: str
    cpu: str
    tty: str  # the kernel's name of the first serial port
    bus: Literal["pci", "device"]  # virtio-*-pci or virtio-*-device


ARCH_DEFAULTS: dict[str, ArchDefaults] = {
    "x86_64": ArchDefaults("q35", "max", "ttyS0", "pci"),
    "i386": ArchDefaults("q35", "max", "ttyS0", "pci"),
    "aarch64": ArchDefaults("virt", "cortex-a57", "ttyAMA0", "device"),
    "arm": ArchDefaults("virt", "cortex-a15", "ttyAMA0", "device"),
    "riscv64": ArchDefaults("virt", "", "ttyS0", "device"),
}
_UNKNOWN_ARCH = ArchDefaults("", "", "ttyS0", "pci")


@dataclass(frozen=True, kw_only=True)
class QemuSettings(ShellSettings):
    """A QEMU board's settings (``driver: qemu``), typed, every default declared here once; the
    console shell's keys (prompt, login, fatal_patterns, stages...) come from :class:`ShellSettings`."""

    arch: str = setting("x86_64", doc="QEMU binary qemu-system-<arch>: x86_64, aarch64, arm, riscv64...")
    binary: str | None = setting(None, doc="the QEMU executable, if not qemu-system-<arch> on PATH")
    machine: str | None = setting(None, doc="-machine (default: q35 on x86, virt on ARM/RISC-V)")
    cpu: str | None = setting(
        None, doc="-cpu (default: max on x86 with TCG, host with KVM, cortex-a57 on aarch64)"
    )
    smp: int = setting(1, doc="number of virtual CPUs")
    memory: int = setting(256 * 1024 * 1024, kind="size", doc="guest RAM, e.g. 256M")
    kernel: Path | None = setting(None, doc="-kernel: a Linux image booted directly")
    initrd: Path | None = setting(None, doc="-initrd")
    append: str | None = setting(None, doc="kernel command line (default: console on the serial port, quiet)")
    dtb: Path | None = setting(None, doc="-dtb")
    bios: Path | None = setting(None, doc="-bios: firmware such as U-Boot")
    disks: Mapping[str, DiskSettings] = setting(
        {},
        doc="virtio disks: a list of files, or name: file | size | {file, format, size}; "
        "files are never written (the VM runs on a per-run overlay), a size makes a blank raw disk",
        collection_shorthand=disks_shorthand,
        shorthand=disk_shorthand,
    )
    network: UserNetwork = setting(
        UserNetwork(),
        doc="'none', or user-mode networking: {forwards: {name: guest_port}, tftp: true, model: ...}",
        shorthand=network_shorthand,
    )
    accel: Literal["tcg", "kvm", "auto"] = setting(
        "tcg",
        kind="str",
        choices=("tcg", "kvm", "auto"),
        doc="tcg (default), kvm, or auto (kvm only if a probe boots)",
    )
    tb_size: int = setting(
        32 * 1024 * 1024,
        kind="size",
        doc="TCG translation cache (QEMU's default, 1G, grows RSS with each reboot)",
    )
    shell: Literal["linux", "uboot"] = setting(
        "linux", kind="str", choices=("linux", "uboot"), doc="what runs on the console: linux or uboot"
    )
    ready: str | None = setting(
        None, doc="regex that means booted (default: a shell prompt, or U-Boot's prompt)"
    )
    boot_timeout: float = setting(
        60.0, kind="duration", doc="how long on()/reset() wait for the ready pattern"
    )
    console_timeout: float = setting(30.0, kind="duration", doc="default timeout of console waits")
    powerdown_timeout: float = setting(
        0.0,
        kind="duration",
        doc="on off(), first ask the guest to power down (ACPI) and wait this long; 0: don't",
    )
    autostart: bool = setting(True, doc="power on when the device starts (false: start powered off)")
    extra_args: Sequence[str] = setting([], doc="more qemu-system arguments, appended as given")
    cache: bool = setting(
        True, doc="keep the booted state across runs (--jumpstarter-cache); false: always boot cold"
    )
    display: bool = setting(
        False, doc="a display (VGA, or virtio-gpu on virt): screenshot(), and a PNG in a failed test's report"
    )

    @property
    def shell_settings(self) -> ShellSettings:
        return self

    @property
    def defaults(self) -> ArchDefaults:
        return ARCH_DEFAULTS.get(self.arch, _UNKNOWN_ARCH)

    @property
    def executable(self) -> str:
        return self.binary or f"qemu-system-{self.arch}"

    @property
    def machine_type(self) -> str:
        return self.machine or self.defaults.machine

    @property
    def user_network(self) -> UserNetwork | None:
        """The user-mode network, or None with ``network: none``."""
        return None if self.network.mode == "none" else self.network

    def disk_list(self) -> dict[str, Disk]:
        """A fresh per-run :class:`Disk` for each ``disks`` entry (files not made yet)."""
        return {name: spec.disk(name) for name, spec in self.disks.items()}

    def missing_file(self, source: str) -> str | None:
        """Why the board cannot start for want of a file (kernel, initrd, dtb, bios), or None."""
        for key, path in self.files.items():
            if path and not path.exists():
                hint = " (run scripts/build-images)" if "pytest-jumpstarter/images" in str(path) else ""
                return f"{key} file {path} does not exist (setting {key} in {source}){hint}"
        return None

    @property
    def files(self) -> dict[str, Path | None]:
        """The files QEMU is given directly, by setting name (checked before each launch)."""
        return {"kernel": self.kernel, "initrd": self.initrd, "dtb": self.dtb, "bios": self.bios}


#: The board's typed settings are its configuration: one object, no second view.
QemuConfig = QemuSettings


def check(settings: QemuSettings) -> Iterable[tuple[str, str]]:
    """Problems between settings (each one alone was already coerced): (key, message)."""
    if not (settings.kernel or settings.bios or settings.disks):
        yield "kernel", "a QEMU board needs something to boot: set kernel, bios or disks"
    if settings.initrd and not settings.kernel:
        yield "initrd", "initrd needs kernel (it is passed with -kernel)"
    if settings.append and not settings.kernel:
        yield "append", "append is a kernel command line: it needs kernel"
    if not re.fullmatch(r"[a-z0-9_]+", settings.arch):
        yield "arch", f"expected an architecture such as x86_64 or aarch64, found {settings.arch!r}"
    elif settings.arch not in ARCH_DEFAULTS and not settings.machine:
        yield "machine", f"arch {settings.arch!r} has no default machine: set machine"
    if settings.smp < 1:
        yield "smp", f"expected at least 1 CPU, found {settings.smp}"
    yield from check_shell(settings, settings.shell)
    for name in settings.disks:
        if not DISK_NAME.fullmatch(name):
            yield "disks", f"disk name {name!r}: use letters, digits, - and _"


def narrow_parts(settings: QemuSettings, parts: tuple[type, ...]) -> tuple[type, ...]:
    """What a board so configured really has: no NIC (``network: none``) means no forwards, no
    address and no TFTP; TFTP only with ``network: {tftp: true}``.  The loader then rejects, at
    the target file's line, a flasher or tunnel that needs what the board lacks."""
    network = settings.user_network
    if network is None:
        absent: set[type] = {UserNetworkPart, Network, Addressable, TftpHost}
    else:
        absent = set() if network.tftp else {TftpHost}
    return tuple(part for part in parts if part not in absent)
