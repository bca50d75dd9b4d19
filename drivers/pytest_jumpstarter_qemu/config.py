"""A QEMU board's settings: their declaration, their checks, and the one typed view the board reads.

Every setting is read here and nowhere else (:class:`QemuConfig`), so declaring them as a typed
dataclass later changes this file only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pytest_jumpstarter.settings import Setting, SettingValueError, build, declare
from pytest_jumpstarter.shell_settings import ShellSettings, check_shell

from .disks import Disk, parse_disks
from .network import UserNetwork, parse_network


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

SETTINGS: Mapping[str, Setting] = {
    "arch": Setting("str", "x86_64", "QEMU binary qemu-system-<arch>: x86_64, aarch64, arm, riscv64..."),
    "binary": Setting("str", None, "the QEMU executable, if not qemu-system-<arch> on PATH"),
    "machine": Setting("str", None, "-machine (default: q35 on x86, virt on ARM/RISC-V)"),
    "cpu": Setting("str", None, "-cpu (default: max on x86 with TCG, host with KVM, cortex-a57 on aarch64)"),
    "smp": Setting("int", 1, "number of virtual CPUs"),
    "memory": Setting("size", 256 * 1024 * 1024, "guest RAM, e.g. 256M"),
    "kernel": Setting("path", None, "-kernel: a Linux image booted directly"),
    "initrd": Setting("path", None, "-initrd"),
    "append": Setting("str", None, "kernel command line (default: console on the serial port, quiet)"),
    "dtb": Setting("path", None, "-dtb"),
    "bios": Setting("path", None, "-bios: firmware such as U-Boot"),
    "disks": Setting(
        "any",
        {},
        "virtio disks: a list of files, or name: file | size | {file, format, size}; "
        "files are never written (the VM runs on a per-run overlay), a size makes a blank raw disk",
    ),
    "network": Setting(
        "any", {}, "'none', or user-mode networking: {forwards: {name: guest_port}, tftp: true, model: ...}"
    ),
    "accel": Setting(
        "str", "tcg", "tcg (default), kvm, or auto (kvm only if a probe boots)", ("tcg", "kvm", "auto")
    ),
    "tb_size": Setting(
        "size", 32 * 1024 * 1024, "TCG translation cache (QEMU's default, 1G, grows RSS with each reboot)"
    ),
    "shell": Setting("str", "linux", "what runs on the console: linux or uboot", ("linux", "uboot")),
    "ready": Setting("str", None, "regex that means booted (default: a shell prompt, or U-Boot's prompt)"),
    "boot_timeout": Setting("duration", 60.0, "how long on()/reset() wait for the ready pattern"),
    "console_timeout": Setting("duration", 30.0, "default timeout of console waits"),
    "powerdown_timeout": Setting(
        "duration", 0.0, "on off(), first ask the guest to power down (ACPI) and wait this long; 0: don't"
    ),
    "autostart": Setting("bool", True, "power on when the device starts (false: start powered off)"),
    "extra_args": Setting("list", [], "more qemu-system arguments, appended as given"),
    # The console shell's keys (prompt, login, fatal_patterns, interrupt, line_limit, stages...): one
    # group shared by the board drivers, kept apart so the QEMU keys above can change on their own.
    **declare(ShellSettings),
}
_SHELL_KEYS = tuple(declare(ShellSettings))


def check(settings: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """Problems between settings (each one alone was already coerced): (key, message)."""
    if not (settings.get("kernel") or settings.get("bios") or settings.get("disks")):
        yield "kernel", "a QEMU board needs something to boot: set kernel, bios or disks"
    if settings.get("initrd") and not settings.get("kernel"):
        yield "initrd", "initrd needs kernel (it is passed with -kernel)"
    if settings.get("append") and not settings.get("kernel"):
        yield "append", "append is a kernel command line: it needs kernel"
    arch = str(settings.get("arch", "x86_64"))
    if not re.fullmatch(r"[a-z0-9_]+", arch):
        yield "arch", f"expected an architecture such as x86_64 or aarch64, found {arch!r}"
    elif arch not in ARCH_DEFAULTS and not settings.get("machine"):
        yield "machine", f"arch {arch!r} has no default machine: set machine"
    if settings.get("smp", 1) < 1:
        yield "smp", f"expected at least 1 CPU, found {settings.get('smp')}"
    try:
        parse_disks(settings.get("disks") or {}, Path("."))
    except SettingValueError as exc:
        yield "disks", str(exc)
    try:
        parse_network(settings.get("network"))
    except SettingValueError as exc:
        yield "network", str(exc)
    yield from check_shell(shell_settings(settings), str(settings.get("shell", "linux")))


def shell_settings(settings: Mapping[str, Any]) -> ShellSettings:
    """The console shell's settings out of a board's settings."""
    shell: ShellSettings = build(
        declare(ShellSettings), ShellSettings, {k: settings[k] for k in _SHELL_KEYS if k in settings}
    )
    return shell


@dataclass(frozen=True, kw_only=True)
class QemuConfig:
    """A board's settings, typed, with every default applied (what the board and its parts read)."""

    arch: str
    binary: str
    defaults: ArchDefaults
    machine: str
    cpu: str | None  # None: the architecture's default (or host with KVM)
    smp: int
    memory: int
    kernel: Path | None
    initrd: Path | None
    append: str | None
    dtb: Path | None
    bios: Path | None
    disks: Mapping[str, Disk]
    network: UserNetwork | None
    accel: Literal["tcg", "kvm", "auto"]
    tb_size: int
    shell: Literal["linux", "uboot"]
    ready: str | None
    boot_timeout: float
    console_timeout: float
    powerdown_timeout: float
    autostart: bool
    extra_args: tuple[str, ...]
    shell_settings: ShellSettings

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], base_dir: Path) -> QemuConfig:
        """From coerced (and checked) settings; relative disk files resolve against ``base_dir``."""

        def get(key: str) -> Any:
            return settings.get(key, SETTINGS[key].default)

        def path(key: str) -> Path | None:
            value = get(key)
            return Path(value) if value else None

        arch = str(get("arch"))
        defaults = ARCH_DEFAULTS.get(arch, _UNKNOWN_ARCH)
        return cls(
            arch=arch,
            binary=get("binary") or f"qemu-system-{arch}",
            defaults=defaults,
            machine=get("machine") or defaults.machine,
            cpu=get("cpu") or None,
            smp=int(get("smp")),
            memory=int(get("memory")),
            kernel=path("kernel"),
            initrd=path("initrd"),
            append=get("append"),
            dtb=path("dtb"),
            bios=path("bios"),
            disks=parse_disks(get("disks") or {}, base_dir),
            network=parse_network(get("network")),
            accel=get("accel"),
            tb_size=int(get("tb_size")),
            shell=get("shell"),
            ready=get("ready"),
            boot_timeout=float(get("boot_timeout")),
            console_timeout=float(get("console_timeout")),
            powerdown_timeout=float(get("powerdown_timeout")),
            autostart=bool(get("autostart")),
            extra_args=tuple(str(a) for a in get("extra_args") or ()),
            shell_settings=shell_settings(settings),
        )

    @property
    def files(self) -> dict[str, Path | None]:
        """The files QEMU is given directly, by setting name (checked before each launch)."""
        return {"kernel": self.kernel, "initrd": self.initrd, "dtb": self.dtb, "bios": self.bios}
