"""A QEMU board: one ``qemu-system-*`` process with a serial console and QMP, switched like hardware.

QEMU starts paused (``-S``) and connects to two unix sockets we listen on (console and QMP), so
nothing it prints is lost and a QEMU that cannot start is seen at once (its process exits; we wait
on a pidfd, not a polling loop).  Only then does ``cont`` let the guest run.

The process runs in its own process group with ``PR_SET_PDEATHSIG(SIGKILL)``: even a pytest killed
with SIGKILL leaves no QEMU behind.  Base disk images are never written: the VM runs on per-run
qcow2 overlays in the device's workdir.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pytest_jumpstarter.console import (
    LINUX_FATAL_PATTERNS,
    Console,
    LinuxShell,
    SocketTransport,
)
from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import (
    ConsoleTimeout,
    DeviceExited,
    DeviceStateError,
    DriverError,
    TunnelError,
)
from pytest_jumpstarter.settings import Setting, SettingValueError, _coerce_kind
from pytest_jumpstarter.uboot import UBootShell

from .qmp import Events, Qmp

#: A Linux shell prompt: ``jumpstarter:~# ``, ``root@host:/# ``, ``$ `` (ash may send ESC[6n after it).
LINUX_PROMPT = r"(?:^|\n)[^\r\n]{0,80}[#$] (?:\x1b\[6n)?"

#: Defaults per architecture: QEMU binary suffix, machine, CPU, console device, disk/net bus.
_ARCH_DEFAULTS: dict[str, dict[str, str]] = {
    "x86_64": {"machine": "q35", "cpu": "max", "tty": "ttyS0", "bus": "pci"},
    "i386": {"machine": "q35", "cpu": "max", "tty": "ttyS0", "bus": "pci"},
    "aarch64": {"machine": "virt", "cpu": "cortex-a57", "tty": "ttyAMA0", "bus": "device"},
    "arm": {"machine": "virt", "cpu": "cortex-a15", "tty": "ttyAMA0", "bus": "device"},
    "riscv64": {"machine": "virt", "cpu": "", "tty": "ttyS0", "bus": "device"},
}

_DISK_FORMATS = ("raw", "qcow2")
#: The internal snapshot ``reset: snapshot`` restores, and the drive that holds the RAM and device state.
SNAPSHOT_TAG = "jumpstarter-pristine"
_STATE_DRIVE = "jumpstarter-state"
_PR_SET_PDEATHSIG = 1


@dataclass
class _Disk:
    """One virtio disk: where it comes from, and the per-run file the VM really uses."""

    name: str
    base: Path | None  # never written; None for a blank disk
    base_format: str
    size: int | None  # blank disks only
    path: Path | None = None  # the per-run file (overlay, blank file, or what set_disk gave)
    format: str = "qcow2"


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the parent goes, however the parent goes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class QemuBoard(Driver[Any]):
    """A board under ``qemu-system-<arch>``: power, serial console, QMP, disks and user-mode network."""

    name = "qemu"
    role = "qemu_vm"
    restore_modes = ("reboot", "snapshot")
    #: Power-ons of this device so far (forwards and console belong to one power-on).
    boots: int
    settings: ClassVar[Mapping[str, Setting]] = {
        "arch": Setting("str", "x86_64", "QEMU binary qemu-system-<arch>: x86_64, aarch64, arm, riscv64..."),
        "binary": Setting("str", None, "the QEMU executable, if not qemu-system-<arch> on PATH"),
        "machine": Setting("str", None, "-machine (default: q35 on x86, virt on ARM/RISC-V)"),
        "cpu": Setting(
            "str", None, "-cpu (default: max on x86 with TCG, host with KVM, cortex-a57 on aarch64)"
        ),
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
            "any",
            {},
            "'none', or user-mode networking: {forwards: {name: guest_port}, tftp: true, model: ...}",
        ),
        "accel": Setting(
            "str", "tcg", "tcg (default), kvm, or auto (kvm only if a probe boots)", ("tcg", "kvm", "auto")
        ),
        "tb_size": Setting(
            "size", 32 * 1024 * 1024, "TCG translation cache (QEMU's default, 1G, grows RSS with each reboot)"
        ),
        "shell": Setting("str", "linux", "what runs on the console: linux or uboot", ("linux", "uboot")),
        "ready": Setting(
            "str", None, "regex that means booted (default: a shell prompt, or U-Boot's prompt)"
        ),
        "boot_timeout": Setting("duration", 60.0, "how long on()/reset() wait for the ready pattern"),
        "console_timeout": Setting("duration", 30.0, "default timeout of console waits"),
        "powerdown_timeout": Setting(
            "duration", 0.0, "on off(), first ask the guest to power down (ACPI) and wait this long; 0: don't"
        ),
        "autostart": Setting("bool", True, "power on when the device starts (false: start powered off)"),
        "extra_args": Setting("list", [], "more qemu-system arguments, appended as given"),
    }

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        if not (settings.get("kernel") or settings.get("bios") or settings.get("disks")):
            yield "kernel", "a QEMU board needs something to boot: set kernel, bios or disks"
        if settings.get("initrd") and not settings.get("kernel"):
            yield "initrd", "initrd needs kernel (it is passed with -kernel)"
        if settings.get("append") and not settings.get("kernel"):
            yield "append", "append is a kernel command line: it needs kernel"
        arch = str(settings.get("arch", "x86_64"))
        if not re.fullmatch(r"[a-z0-9_]+", arch):
            yield "arch", f"expected an architecture such as x86_64 or aarch64, found {arch!r}"
        elif arch not in _ARCH_DEFAULTS and not settings.get("machine"):
            yield "machine", f"arch {arch!r} has no default machine: set machine"
        if settings.get("smp", 1) < 1:
            yield "smp", f"expected at least 1 CPU, found {settings.get('smp')}"
        try:
            _parse_disks(settings.get("disks") or {}, Path("."))
        except SettingValueError as exc:
            yield "disks", str(exc)
        try:
            _parse_network(settings.get("network"))
        except SettingValueError as exc:
            yield "network", str(exc)

    def __init__(self, ctx: DeviceContext[Any]) -> None:
        super().__init__(ctx)
        self.arch: str = self._setting("arch")
        defaults = _ARCH_DEFAULTS.get(self.arch, {"machine": "", "cpu": "", "tty": "ttyS0", "bus": "pci"})
        self._defaults = defaults
        self.shell_kind: Literal["linux", "uboot"] = self._setting("shell")
        base_dir = Path(ctx.source).parent if ctx.source and not ctx.source.startswith("<") else Path.cwd()
        self._disks: dict[str, _Disk] = _parse_disks(self._setting("disks") or {}, base_dir)
        self._network = _parse_network(self._setting("network"))
        self.ready_pattern: str = self._setting("ready") or (
            UBootShell.prompt if self.shell_kind == "uboot" else LINUX_PROMPT
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._console: Console | None = None
        self._qmp: Qmp | None = None
        self._command: list[str] = []
        self._sockdir: Path | None = None
        self._stderr_path = ctx.workdir / "qemu.stderr"
        self._tftp_root: Path | None = None
        self.forwards: dict[str, int] = {}
        self.events: Events = Events()
        self.boots = 0
        #: Seconds of the last power-on: "launch" (process start to the guest running), "ready" (to ready).
        self.timings: dict[str, float] = {}
        self._accel_resolved: str | None = None
        # reset: snapshot -- a qcow2 state drive, the booted state saved in it, or why it could not be.
        self._snapshot_wanted = ctx.reset == "snapshot"
        self._state_drive: Path | None = None
        self._snapshot: str | None = None
        self._snapshot_error: str | None = None

    def _setting(self, key: str) -> Any:
        """A setting's value: what the target file says, or the declared default."""
        return self.ctx.settings.get(key, self.settings[key].default)

    # --- lifecycle (the plugin's) ----------------------------------------------------------------

    def start(self) -> None:
        self.ctx.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare_disks()
        if self._snapshot_wanted:
            self._prepare_state_drive()
        if self._network is not None and self._network.get("tftp"):
            self._tftp_root = self.ctx.workdir / "tftp"
            self._tftp_root.mkdir(exist_ok=True)
        self.started = True
        if self._setting("autostart"):
            try:
                self.on()
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        try:
            self.off()
        finally:
            self.started = False
            for disk in self._disks.values():
                if disk.path is not None and disk.path.parent == self.ctx.workdir:
                    disk.path.unlink(missing_ok=True)
                disk.path = None
            if self._state_drive is not None:
                self._state_drive.unlink(missing_ok=True)
                self._state_drive = None
            self._snapshot = None
            if self._tftp_root is not None:
                shutil.rmtree(self._tftp_root, ignore_errors=True)
                self._tftp_root = None

    def restore(self, mode: str) -> str | None:
        """The plugin's between-tests restore: ``reset: reboot`` is :meth:`reset`; ``reset: snapshot``
        restores the state saved right after the first boot (see :meth:`restore_snapshot`).
        A QEMU that died comes back as a fresh one."""
        if mode not in self.restore_modes:
            return (
                f"driver 'qemu' cannot restore with reset: {mode} (it can: {', '.join(self.restore_modes)})"
            )
        if mode == "snapshot" and self.is_running:
            return self.restore_snapshot()
        self.reset()
        return None

    def reset(self) -> None:
        """Power: reset the board (QMP ``system_reset``) and wait until ready again.

        A board that is off, or whose QEMU died, is powered on instead.
        """
        if not self.is_running:
            if self._proc is not None:
                self.off()  # reap the dead QEMU (its files and sockets) before a fresh one
            self.on()
            return
        console = self.console
        seen = len(self.events)
        self.execute("system_reset")
        # The reset happens after QMP answers; its RESET event says it did.  QEMU writes serial output
        # to the socket as the guest makes it, so everything from before the reset (a late prompt, say)
        # is readable by then: drop it, or it would look like the board is ready.
        self.wait_event("RESET", timeout=10.0, since=seen)
        console.drain(quiet=0.0, limit=0.5)
        self._wait_ready("after system_reset")

    # --- power -----------------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def on(self) -> None:
        """Launch QEMU and wait until the board is ready (its shell or U-Boot prompt)."""
        self.require_started("on()")
        if self.is_running:
            return
        if self._proc is not None:
            self.off()
        accel = self._resolve_accel()
        self._launch(accel)
        try:
            start = time.monotonic()
            self._wait_ready("while booting")
            self.timings["ready"] = self.timings.get("launch", 0.0) + time.monotonic() - start
            if self._snapshot_wanted:
                self._save_snapshot()
        except BaseException:
            self.off()
            raise

    def off(self) -> None:
        """Power off, bounded: ACPI powerdown if configured, then QMP quit, SIGTERM, SIGKILL."""
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                powerdown = float(self._setting("powerdown_timeout"))
                if powerdown > 0 and self._qmp is not None:
                    with contextlib.suppress(DriverError):
                        self._qmp.execute("system_powerdown", timeout=2.0)
                        self._wait_exit(powerdown)
                if proc.poll() is None and self._qmp is not None:
                    # Console output nobody has read can wedge QEMU's main loop (seen with U-Boot
                    # autobooting after a reset: QMP quit and SIGTERM went unanswered for 7 s);
                    # reading it first lets quit work at once, and the transcript keeps it.
                    self._drain_console()
                    with contextlib.suppress(DriverError):
                        self._qmp.execute("quit", timeout=2.0)
                    self._wait_exit(3.0)
                for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                    if proc.poll() is not None:
                        break
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
                    self._wait_exit(grace)
        finally:
            self._release()

    def cycle(self) -> None:
        """Power off, then on (a fresh QEMU process: a real cold boot)."""
        self.off()
        self.on()

    # --- console ---------------------------------------------------------------------------------

    @property
    def console(self) -> Console:
        """The serial console (pexpect-compatible); ``console.run(cmd)`` runs a shell command."""
        if self._console is None:
            raise DeviceStateError(
                self.device_name, "the console needs a powered-on board; it is off (call on())"
            )
        return self._console

    @property
    def uboot(self) -> UBootShell:
        """The U-Boot helper on the console (``interrupt()``, ``run(cmd)``)."""
        return UBootShell(self.console)

    # --- QMP -------------------------------------------------------------------------------------

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Run a QMP command; returns its ``return`` value."""
        return self._require_qmp(command).execute(command, arguments, timeout)

    def hmp(self, command: str, timeout: float = 10.0) -> str:
        """Run a human monitor (HMP) command, e.g. ``info usernet``, and return its output."""
        return self._require_qmp(command).hmp(command, timeout)

    def wait_event(self, name: str, timeout: float = 10.0, since: int = 0) -> dict[str, Any]:
        """Wait for the QMP event ``name`` (``self.events`` keeps all of them since power-on)."""
        return self.events.wait(name, timeout, since, self.device_name)

    def _require_qmp(self, what: str) -> Qmp:
        if self._qmp is None or not self.is_running:
            raise self._dead_or_off(f"QMP {what!r}")
        return self._qmp

    # --- storage ---------------------------------------------------------------------------------

    def disk_path(self, name: str) -> Path:
        """The per-run file the VM uses for disk ``name`` (base images are never written)."""
        disk = self._disk(name)
        if disk.path is None:
            raise DeviceStateError(self.device_name, f"disk {name!r} has no file yet: start the device first")
        return disk.path

    def disk_format(self, name: str) -> Literal["raw", "qcow2"]:
        fmt = self._disk(name).format
        return "raw" if fmt == "raw" else "qcow2"

    def new_disk_file(self, name: str) -> Path:
        """A path for a disk file in this board's folder (it lives as long as the board does)."""
        self.ctx.workdir.mkdir(parents=True, exist_ok=True)
        return self.ctx.workdir / name

    def set_disk(self, name: str, path: str | os.PathLike[str], fmt: str = "raw") -> None:
        """Make disk ``name`` use ``path`` from the next power-on (the board must be off)."""
        if self.is_running:
            raise DeviceStateError(
                self.device_name,
                f"set_disk({name!r}) needs the board powered off; it is running (call off())",
            )
        if fmt not in _DISK_FORMATS:
            raise DriverError(
                self.device_name, f"set_disk({name!r}): format must be raw or qcow2, found {fmt!r}"
            )
        disk = self._disks.get(name)
        if disk is None:
            disk = self._disks[name] = _Disk(name, None, fmt, None)
        disk.path = Path(path)
        disk.format = fmt

    def _disk(self, name: str) -> _Disk:
        if name not in self._disks:
            have = ", ".join(self._disks) or "none"
            raise DriverError(self.device_name, f"no disk named {name!r} (disks: {have})")
        return self._disks[name]

    def _prepare_disks(self) -> None:
        for disk in self._disks.values():
            if disk.path is not None:
                continue
            if disk.base is None:
                disk.path = self.ctx.workdir / f"disk-{disk.name}.raw"
                with open(disk.path, "wb") as f:
                    f.truncate(disk.size or 0)
                disk.format = "raw"
                continue
            if not disk.base.exists():
                raise DriverError(
                    self.device_name,
                    f"disk {disk.name!r}: base image {disk.base} does not exist"
                    f" (setting disks in {self.ctx.source})",
                )
            overlay = self.ctx.workdir / f"disk-{disk.name}.qcow2"
            self._qemu_img_create(
                ["-b", str(disk.base.resolve()), "-F", disk.base_format, str(overlay)],
                f"disk {disk.name!r}: qemu-img could not make an overlay on {disk.base}",
            )
            disk.path, disk.format = overlay, "qcow2"

    def _qemu_img_create(self, args: list[str], failure: str) -> None:
        """``qemu-img create -f qcow2 ARGS``; a failure raises with ``failure`` and qemu-img's own words."""
        result = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", *args], capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise DriverError(self.device_name, f"{failure}: {result.stderr.strip()}")

    # --- snapshots (reset: snapshot) ------------------------------------------------------------

    @property
    def snapshot_error(self) -> str | None:
        """Why the booted state could not be saved (so ``reset: snapshot`` cold boots), else None."""
        return self._snapshot_error

    def _prepare_state_drive(self) -> None:
        path = self.ctx.workdir / "vmstate.qcow2"
        # The virtual size hardly matters: internal snapshots store the VM state beyond it.
        self._qemu_img_create(
            [str(path), "1M"], f"reset: snapshot needs a qcow2 state drive; qemu-img could not create {path}"
        )
        self._state_drive = path

    def _save_snapshot(self) -> None:
        """Save the booted state (RAM, devices, every disk) as an internal snapshot, right after ready.

        A board that cannot be saved still runs: each ``reset: snapshot`` then returns the reason,
        and the plugin cold boots instead and says why in the report.
        """
        self._snapshot = None
        if self._state_drive is None:
            self._snapshot_error = "the board was started without its snapshot state drive"
            return
        # Save a shell idle at its prompt with nothing left unread: each test starts from exactly there.
        # Linux makes its boot id on first read: read it now, or each restore would make a new one.
        self._sync_console(float(self._setting("console_timeout")), "cat /proc/sys/kernel/random/boot_id")
        self.console.drain(quiet=0.05, limit=1.0)
        started = time.monotonic()
        out = self.hmp(f"savevm {SNAPSHOT_TAG}", timeout=float(self._setting("boot_timeout"))).strip()
        if out:
            self._snapshot_error = (
                f"savevm failed: {_hmp_error(out)} (every writable disk must be qcow2 for snapshots;"
                " give raw disks as qcow2, or use reset: reboot)"
            )
            self.ctx.progress(f"{self.device_name}: {self._snapshot_error}")
            return
        self._snapshot, self._snapshot_error = SNAPSHOT_TAG, None
        self.timings["savevm"] = time.monotonic() - started
        self.ctx.progress(f"{self.device_name}: booted state saved in {self.timings['savevm']:.2f}s")

    def restore_snapshot(self) -> str | None:
        """Bring the running board back to the state saved after boot (HMP ``loadvm``, in place).

        The console socket stays connected; what the old state printed is dropped and a marker
        command proves the shell answers.  Returns ``None`` when restored, else why not (the caller
        then needs a cold boot).
        """
        if self._snapshot is None:
            return self._snapshot_error or "no booted state was saved (reset: snapshot was not set at start)"
        started = time.monotonic()
        out = self.hmp(f"loadvm {self._snapshot}", timeout=float(self._setting("boot_timeout"))).strip()
        self.timings["loadvm"] = time.monotonic() - started
        if out:
            # A failed loadvm leaves the VM stopped, in no known state.
            return f"loadvm failed: {_hmp_error(out)}"
        self.console.drain(quiet=0.0, limit=0.5)
        try:
            self._sync_console(min(10.0, float(self._setting("console_timeout"))))
        except ConsoleTimeout as exc:
            return f"the console did not answer after loadvm: {str(exc).splitlines()[0]}"
        self.timings["restore"] = time.monotonic() - started
        return None

    def _sync_console(self, timeout: float, command: str = "true") -> None:
        """Prove the shell answers, and leave the console just past its next prompt (as after boot)."""
        if self.shell_kind == "uboot":
            self.uboot.sync(timeout)
            return
        result = LinuxShell(self.console).run(f"{command} >/dev/null 2>&1; true", timeout=timeout)
        if result.status != 0:
            raise DriverError(self.device_name, f"the shell answered {command!r} with status {result.status}")
        if not self._setting("ready"):
            self.console.expect(self.ready_pattern, timeout=timeout)

    # --- memory ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The QEMU process id while it runs."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    def rss(self, peak: bool = False) -> int | None:
        """QEMU's resident memory in bytes (``VmRSS``, or its peak ``VmHWM``); None while off."""
        pid = self.pid
        if pid is None:
            return None
        field = "VmHWM:" if peak else "VmRSS:"
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith(field):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    # --- networking ------------------------------------------------------------------------------

    @property
    def tftp_root(self) -> Path | None:
        """The per-run folder slirp's TFTP server serves (``network: {tftp: true}``), else None."""
        return self._tftp_root

    @property
    def guest_address(self) -> str | None:
        """An address the host can reach the guest at; None with user-mode networking (use forwards)."""
        if self._network is None:
            return None
        address = self._network.get("address")
        return str(address) if address else None

    def hostfwd_add(self, guest_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> int:
        """Forward a free host port to ``guest_port`` (slirp picks it; read back over QMP); return it."""
        if self._network is None:
            raise TunnelError(self.device_name, "hostfwd_add needs user-mode networking; network is 'none'")
        before = {f[:3] for f in self._usernet_forwards()}
        out = self.hmp(f"hostfwd_add net0 {proto}:{host}:0-:{guest_port}")
        if out.strip():
            raise TunnelError(
                self.device_name,
                f"could not forward {proto} {host}:0 to guest port {guest_port}: {out.strip()}",
            )
        for fproto, fhost, fport, gport in self._usernet_forwards():
            if (fproto, fhost, fport) not in before and gport == guest_port and fproto == proto:
                return fport
        raise TunnelError(
            self.device_name,
            f"forward to guest {proto} port {guest_port} not found in 'info usernet' after adding it",
        )

    def hostfwd_remove(self, host_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> None:
        out = self.hmp(f"hostfwd_remove net0 {proto}:{host}:{host_port}")
        if "removed" not in out:
            raise TunnelError(
                self.device_name,
                f"could not remove forward {proto} {host}:{host_port}: {out.strip() or 'no answer'}",
            )

    def _read_forwards(self) -> None:
        """Learn the host ports slirp picked for ``network: {forwards: ...}`` (they were asked as port 0)."""
        self.forwards = {}
        if self._network is None or not self._network.get("forwards"):
            return
        found = [f for f in self._usernet_forwards() if f[0] == "tcp"]
        for name, guest_port in self._network["forwards"].items():
            for i, (_, _, host_port, gport) in enumerate(found):
                if gport == guest_port:
                    self.forwards[name] = host_port
                    del found[i]
                    break

    def forward(self, name: str) -> int:
        """The host port (on 127.0.0.1) forwarded to the guest port named ``name`` in ``network.forwards``."""
        if name not in self.forwards:
            have = ", ".join(f"{k}={v}" for k, v in self.forwards.items()) or "none"
            raise TunnelError(
                self.device_name, f"no forward named {name!r} (forwards: {have}); is the board on?"
            )
        return self.forwards[name]

    def _usernet_forwards(self) -> list[tuple[str, str, int, int]]:
        """(proto, host address, host port, guest port) of each HOST_FORWARD in ``info usernet``."""
        found = []
        for line in self.hmp("info usernet").splitlines():
            m = re.match(r"\s*(TCP|UDP)\[HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)", line)
            if m:
                found.append((m.group(1).lower(), m.group(2), int(m.group(3)), int(m.group(4))))
        return found

    # --- the process -----------------------------------------------------------------------------

    def command_line(self, accel: str = "tcg") -> list[str]:
        """The qemu-system command line (without the console/QMP sockets, which are per launch)."""
        s = self._setting
        binary = s("binary") or f"qemu-system-{self.arch}"
        machine = s("machine") or self._defaults["machine"]
        cpu = s("cpu") or ("host" if accel == "kvm" else self._defaults["cpu"])
        memory_mib = max(1, int(s("memory")) // (1024 * 1024))
        cmd = [binary, "-nodefaults", "-display", "none", "-monitor", "none", "-S",
               "-name", f"{self.ctx.target}/{self.device_name}"]  # fmt: skip
        if machine:
            cmd += ["-machine", machine]
        tb_size = int(s("tb_size")) // (1024 * 1024)
        # TCG's translation cache defaults to 1 GiB and, unflushed, grows with every reboot.
        cmd += ["-accel", f"tcg,tb-size={tb_size}" if accel == "tcg" and tb_size else accel]
        if cpu:
            cmd += ["-cpu", cpu]
        cmd += ["-smp", str(s("smp")), "-m", f"{memory_mib}M"]
        if s("kernel"):
            cmd += ["-kernel", str(s("kernel"))]
            append = s("append")
            if append is None:
                append = f"console={self._defaults['tty']},115200 quiet loglevel=3 panic=-1"
            cmd += ["-append", append]
        if s("initrd"):
            cmd += ["-initrd", str(s("initrd"))]
        if s("dtb"):
            cmd += ["-dtb", str(s("dtb"))]
        if s("bios"):
            cmd += ["-bios", str(s("bios"))]
        bus = self._defaults["bus"]
        if self._network is not None:
            netdev = "user,id=net0"
            if self._tftp_root is not None:
                netdev += f",tftp={self._tftp_root}"
            for port in self._network.get("forwards", {}).values():
                netdev += f",hostfwd=tcp:127.0.0.1:0-:{port}"
            model = self._network.get("model") or f"virtio-net-{bus}"
            cmd += ["-netdev", netdev, "-device", f"{model},netdev=net0"]
        if self._state_drive is not None:
            # First of the drives: savevm puts the RAM and device state into the first drive that
            # can hold snapshots.  Not attached to the guest, so it never sees it.
            # cache=unsafe: a per-run scratch file needs no flushes (savevm ~3x faster).
            cmd += ["-drive", f"if=none,id={_STATE_DRIVE},format=qcow2,cache=unsafe,file={self._state_drive}"]
        for disk in self._disks.values():
            if disk.path is None:
                raise DeviceStateError(
                    self.device_name, f"disk {disk.name!r} has no file: start() the device first"
                )
            cmd += ["-drive", f"if=none,id=disk-{disk.name},format={disk.format},file={disk.path}",
                    "-device", f"virtio-blk-{bus},drive=disk-{disk.name}"]  # fmt: skip
        cmd += [str(a) for a in s("extra_args") or []]
        return cmd

    def _check_files(self) -> None:
        for key in ("kernel", "initrd", "dtb", "bios"):
            path = self._setting(key)
            if path and not Path(path).exists():
                hint = " (run scripts/build-images)" if "pytest-jumpstarter/images" in str(path) else ""
                raise DriverError(
                    self.device_name,
                    f"{key} file {path} does not exist (setting {key} in {self.ctx.source}){hint}",
                )

    def _launch(self, accel: str) -> None:
        """Start QEMU paused, connect its console and QMP, let it run.  On any failure nothing is left."""
        try:
            self._launch_paused_then_cont(accel)
        except BaseException:
            self.off()
            raise

    def _launch_paused_then_cont(self, accel: str) -> None:
        self._check_files()
        binary = self._setting("binary") or f"qemu-system-{self.arch}"
        if shutil.which(binary) is None:
            raise DriverError(
                self.device_name,
                f"QEMU binary {binary!r} not found on PATH (install it, or set binary for arch)",
            )
        # unix socket paths are limited to 107 bytes; a pytest tmp path can be longer.
        self._sockdir = Path(tempfile.mkdtemp(prefix="jsq-"))
        console_path = self._sockdir / "console.sock"
        qmp_path = self._sockdir / "qmp.sock"
        with contextlib.ExitStack() as stack:
            listeners = []
            for path in (console_path, qmp_path):
                lsock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                lsock.bind(str(path))
                lsock.listen(1)
                listeners.append(lsock)
            command = [
                *self.command_line(accel),
                "-chardev", f"socket,id=console0,path={console_path}",
                "-serial", "chardev:console0",
                "-qmp", f"unix:{qmp_path}",
            ]  # fmt: skip
            self._command = command
            self.ctx.workdir.mkdir(parents=True, exist_ok=True)
            (self.ctx.workdir / "qemu.cmdline").write_text(shlex.join(command) + "\n")
            with open(self._stderr_path, "wb") as stderr:
                launched = time.monotonic()
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            try:
                self._pidfd = os.pidfd_open(self._proc.pid)
            except (AttributeError, OSError):
                self._pidfd = None
            self.ctx.progress(f"{self.device_name}: QEMU pid {self._proc.pid} starting")
            deadline = time.monotonic() + 30.0
            console_sock = stack.enter_context(self._accept(listeners[0], deadline, "the console socket"))
            qmp_sock = stack.enter_context(self._accept(listeners[1], deadline, "the QMP socket"))
            # Connected: the socket files have served their purpose.  Removing them now means that
            # even a SIGKILLed pytest (which cannot clean up) leaves no folder behind.
            for lsock in listeners:
                lsock.close()
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None
            self.events = Events()
            try:
                self._qmp = Qmp(self.device_name, qmp_sock, timeout=max(1.0, deadline - time.monotonic()))
            except DriverError:
                if self._wait_exit(2.0):  # QEMU died during the handshake: say that, not "QMP failed"
                    raise self._exited("while starting (during the QMP handshake)") from None
                raise
            self.events = self._qmp.events
            self._console = Console(
                SocketTransport(console_sock),
                device=self.device_name,
                timeout=float(self._setting("console_timeout")),
                logfile_read=self.ctx.transcript,
                fatal_patterns=LINUX_FATAL_PATTERNS if self.shell_kind == "linux" else (),
                on_eof=self._on_console_eof,
            )
            self._console.shell = (
                UBootShell(self._console) if self.shell_kind == "uboot" else LinuxShell(self._console)
            )
            self._read_forwards()
            self._qmp.execute("cont", timeout=5.0)
            self.boots += 1
            self.timings = {"launch": time.monotonic() - launched}
            # Both sockets now belong to the console and QMP: they must outlive this block.
            stack.pop_all()

    def _accept(self, listener: socket.socket, deadline: float, what: str) -> socket.socket:
        """Wait for QEMU to connect to ``listener``; fail at once if QEMU exits instead."""
        assert self._proc is not None
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            if self._pidfd is not None:
                sel.register(self._pidfd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if self._proc.poll() is not None:
                    raise self._exited(f"while starting (before connecting to {what})")
                if remaining <= 0:
                    raise DriverError(
                        self.device_name,
                        f"QEMU (pid {self._proc.pid}) did not connect to {what} within 30s\n"
                        f"command: {shlex.join(self._command)}\nstderr:\n{self._stderr_tail()}",
                    )
                # Without a pidfd, wake up now and then to notice an exit.
                ready = sel.select(remaining if self._pidfd is not None else min(remaining, 0.05))
                for key, _ in ready:
                    if key.fileobj is listener:
                        conn, _ = listener.accept()
                        return conn

    def _wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for QEMU to exit; True if it did."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _wait_ready(self, context: str, timeout: float | None = None) -> None:
        console = self.console
        timeout = float(self._setting("boot_timeout")) if timeout is None else timeout
        if self.shell_kind == "uboot" and not self._setting("ready"):
            self.uboot.interrupt(timeout)
        else:
            console.expect(self.ready_pattern, timeout=timeout)
        self.ctx.progress(f"{self.device_name}: ready {context}")

    def _drain_console(self) -> None:
        """Read whatever the console holds, without waiting for more; a closed console is fine here."""
        if self._console is None:
            return
        with contextlib.suppress(Exception):
            self._console.drain(quiet=0.0, limit=0.5)

    def _release(self) -> None:
        """Close everything of the last launch: console, QMP, pidfd, sockets.  The process is gone."""
        if self._console is not None:
            self._console.close()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None
        if self._proc is not None and self._proc.poll() is None:
            # Should not happen after off(); never leave a QEMU behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(5.0)
        self._proc = None
        self._console = None

    # --- diagnosis -------------------------------------------------------------------------------

    def _on_console_eof(self) -> BaseException | None:
        """The console ended: QEMU exited (or is about to).  Say so, with its status and stderr."""
        if self._proc is None:
            return None
        self._wait_exit(2.0)
        return self._exited("while the console was in use")

    def _exited(self, context: str) -> DeviceExited:
        assert self._proc is not None
        return DeviceExited(
            self.device_name,
            returncode=self._proc.poll(),
            command=self._command,
            stderr_tail=self._stderr_tail(),
            console_tail=self._console.tail() if self._console is not None else "",
            context=f"(QEMU pid {self._proc.pid}) {context}",
        )

    def _dead_or_off(self, what: str) -> DriverError:
        if self._proc is not None and self._proc.poll() is not None:
            return self._exited(f"before {what}")
        return DeviceStateError(self.device_name, f"{what} needs a powered-on board; it is off (call on())")

    def _stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- acceleration ----------------------------------------------------------------------------

    def _resolve_accel(self) -> str:
        accel = str(self._setting("accel"))
        if accel != "auto":
            return accel
        if self._accel_resolved is None:
            self._accel_resolved = _probe_kvm(self)
        return self._accel_resolved


_KVM_PROBES: dict[tuple[str, ...], str] = {}


def _probe_kvm(board: QemuBoard) -> str:
    """``accel: auto``: KVM only if a board with this command line really boots with it (once per run).

    On some hosts /dev/kvm exists but a guest aborts or hangs under KVM, so its presence proves nothing.
    """
    key = tuple(board.command_line("kvm"))
    if key in _KVM_PROBES:
        return _KVM_PROBES[key]
    result = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        try:
            board._launch("kvm")
            # A guest that hangs under KVM must not cost the whole boot timeout on every run.
            board._wait_ready("(KVM probe)", min(30.0, float(board._setting("boot_timeout"))))
            result = "kvm"
        except DriverError as exc:
            board.ctx.progress(
                f"{board.device_name}: KVM did not boot ({str(exc).splitlines()[0]}); using TCG"
            )
        finally:
            board.off()
    _KVM_PROBES[key] = result
    return result


def _parse_disks(value: Any, base_dir: Path) -> dict[str, _Disk]:
    """``disks`` as a list of files, or a mapping name -> file | size | {file, format, size}."""
    if isinstance(value, str):
        value = [p.strip() for p in re.split(r"[\n,]", value) if p.strip()]
    if isinstance(value, list):
        value = {f"disk{i}": v for i, v in enumerate(value)}
    if not isinstance(value, Mapping):
        raise SettingValueError(
            f"expected a list of files or a mapping name: file, found {type(value).__name__}"
        )
    disks = {}
    for name, spec in value.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
            raise SettingValueError(f"disk name {name!r}: use letters, digits, - and _")
        if not isinstance(spec, Mapping):
            spec = {"size": spec} if _is_size(spec) else {"file": spec}
        unknown = set(spec) - {"file", "format", "size"}
        if unknown:
            raise SettingValueError(
                f"disk {name!r}: unknown keys {sorted(unknown)} (known: file, format, size)"
            )
        fmt = spec.get("format")
        if fmt is not None and fmt not in _DISK_FORMATS:
            raise SettingValueError(f"disk {name!r}: format must be raw or qcow2, found {fmt!r}")
        if spec.get("file") is not None:
            try:
                path = _coerce_kind("path", spec["file"], base_dir)
            except SettingValueError as exc:
                raise SettingValueError(f"disk {name!r}: {exc}") from None
            fmt = fmt or ("qcow2" if path.suffix == ".qcow2" else "raw")
            disks[str(name)] = _Disk(str(name), path, fmt, None)
        elif spec.get("size") is not None:
            try:
                size = _coerce_kind("size", spec["size"], base_dir)
            except SettingValueError as exc:
                raise SettingValueError(f"disk {name!r}: {exc}") from None
            disks[str(name)] = _Disk(str(name), None, "raw", size)
        else:
            raise SettingValueError(f"disk {name!r}: give a file or a size")
    return disks


def _hmp_error(out: str) -> str:
    """An HMP error as one line: ``Error: Device 'x' is ...`` -> ``Device 'x' is ...``."""
    text = " ".join(out.split())
    return text[len("Error: ") :] if text.startswith("Error: ") else text


def _is_size(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    return (
        isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[KMGT]i?B?\s*", value, re.IGNORECASE) is not None
    )


def _parse_network(value: Any) -> dict[str, Any] | None:
    """``network``: ``none``, or user-mode options {forwards: {name: port}, tftp: bool, model, address}."""
    if value in (None, "", "user"):
        return {"forwards": {}}
    if value in ("none", False):
        return None
    if not isinstance(value, Mapping):
        raise SettingValueError(f"expected 'none', 'user' or a mapping of options, found {value!r}")
    unknown = set(value) - {"mode", "forwards", "tftp", "model", "address"}
    if unknown:
        raise SettingValueError(
            f"unknown keys {sorted(unknown)} (known: mode, forwards, tftp, model, address)"
        )
    if value.get("mode", "user") == "none":
        return None
    if value.get("mode", "user") != "user":
        raise SettingValueError(f"mode: expected user or none, found {value.get('mode')!r}")
    forwards = value.get("forwards") or {}
    if not isinstance(forwards, Mapping):
        raise SettingValueError(f"forwards: expected name: guest_port pairs, found {forwards!r}")
    parsed = {}
    for name, port in forwards.items():
        try:
            number = _coerce_kind("int", port, Path("."))
        except SettingValueError as exc:
            raise SettingValueError(f"forwards: {name}: {exc}") from None
        if not 0 < number < 65536:
            raise SettingValueError(f"forwards: {name}: expected a port 1-65535, found {number}")
        parsed[str(name)] = number
    tftp = value.get("tftp", False)
    if isinstance(tftp, str):
        tftp = tftp.lower() in ("true", "yes", "on", "1")
    return {
        "forwards": parsed,
        "tftp": bool(tftp),
        "model": value.get("model"),
        "address": value.get("address"),
    }
