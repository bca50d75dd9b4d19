"""A QEMU board: one ``qemu-system-*`` process with a serial console and QMP, switched like hardware.

Its parts, one concern each: :mod:`.config` (the settings, their checks and the typed view every part
reads), :mod:`.cmdline` (the command line, a pure function of the settings and the per-run files),
:mod:`.supervisor` (the process: paused launch on our sockets, pidfd, bounded stop, exit diagnosis),
:mod:`.disks` and :mod:`.qemu_img` (per-run overlays; base images are never written), :mod:`.snapshot`
(``reset: snapshot``), :mod:`.network` (user-mode networking, forwards), :mod:`.accel` (``accel: auto``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pytest_jumpstarter import stages as _stages
from pytest_jumpstarter.console import Console
from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import DeviceExited, DeviceStateError, DriverError
from pytest_jumpstarter.shell_settings import ShellSettings
from pytest_jumpstarter.transports import SocketTransport
from pytest_jumpstarter.uboot import UBootShell

from . import config as _config
from .accel import ACCEL_CHOICES
from .cmdline import DiskFile, RunFiles, command_line
from .config import QemuSettings
from .diagnosis import diagnose
from .disks import Disks
from .network import UserNet
from .qmp import Events, Qmp
from .restarts import RestartWatch
from .snapshot import SNAPSHOT_TAG, Snapshots
from .supervisor import QemuProcess, process_memory
from .warm import WarmStart, receive_state

__all__ = ["LINUX_PROMPT", "SNAPSHOT_TAG", "QemuBoard"]

#: A Linux shell prompt: ``jumpstarter:~# ``, ``root@host:/# ``, ``$ `` (ash may send ESC[6n after it).
LINUX_PROMPT = r"(?:^|\n)[^\r\n]{0,80}[#$] (?:\x1b\[6n)?"


class QemuBoard(Driver[QemuSettings]):
    """A board under ``qemu-system-<arch>``: power, serial console, QMP, disks and user-mode network."""

    name = "qemu"
    role = "qemu_vm"
    restore_modes = ("reboot", "snapshot")
    #: Power-ons of this device so far (forwards and console belong to one power-on).
    boots: int

    @classmethod
    def check(cls, settings: QemuSettings) -> Iterable[tuple[str, str]]:
        return _config.check(settings)

    @classmethod
    def provides(cls, settings: QemuSettings) -> tuple[type, ...]:
        return _config.narrow_parts(settings, super().provides(settings))

    def __init__(self, ctx: DeviceContext[QemuSettings]) -> None:
        super().__init__(ctx)
        self.config: QemuSettings = ctx.settings
        self.arch = self.config.arch
        self.shell_kind: Literal["linux", "uboot"] = self.config.shell
        self.ready_pattern: str = self.config.ready or (
            UBootShell.prompt_line
            if self.shell_kind == "uboot"
            else self.config.shell_settings.prompt or LINUX_PROMPT
        )
        #: The boot stage the board is in (``shell`` at power-on; see :meth:`boot_to`).
        self.stage: str = self.shell_kind
        self._disks = Disks(self.device_name, self.config.disk_list(), ctx.workdir, ctx.source)
        self._net = UserNet(self.device_name, self.config.user_network, self.hmp)
        self._snapshots = Snapshots(ctx.reset == "snapshot")
        self.warm = WarmStart(self)
        #: The QEMU of the current (or last) power-on; None before the first.
        self.process: QemuProcess | None = None
        self._console: Console | None = None
        self._tftp_root: Path | None = None
        self.events: Events = Events()
        self._restarts = RestartWatch(self.device_name)
        self.boots = 0
        #: Screenshots taken (names the files).
        self.shots = 0
        #: The acceleration of the last power-on (``accel: auto`` resolved).
        self.accel: str | None = None
        #: Seconds of the last power-on: "launch" (process start to the guest running), "ready" (to ready).
        self.timings: dict[str, float] = {}
        self._shots = 0  # screenshots taken (for their default file names)

    # --- lifecycle (the plugin's) ----------------------------------------------------------------

    def start(self) -> None:
        self.ctx.workdir.mkdir(parents=True, exist_ok=True)
        self._disks.prepare()
        self._snapshots.prepare(self.device_name, self.ctx.workdir)
        if self.config.user_network is not None and self.config.network.tftp:
            self._tftp_root = self.ctx.workdir / "tftp"
            self._tftp_root.mkdir(exist_ok=True)
        self.started = True
        if self.config.autostart:
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
            self._disks.remove_files()
            self._snapshots.remove_files()
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
            reason = self.restore_snapshot()
            if reason is None:
                self._expected_restart()
            return reason
        self.reset()
        return None

    def reset(self) -> None:
        """Power: reset the board (QMP ``system_reset``) and wait until ready again.

        A board that is off, or whose QEMU died, is powered on instead.
        """
        if not self.is_running:
            if self.process is not None:
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
        self._expected_restart()
        self._wait_ready("after system_reset")

    def health(self) -> str | None:
        if not self.started:
            return None
        if self.process is not None and self.process.qmp is not None:
            # A QEMU killed a moment ago may not have exited yet; one that answers QMP is alive.
            try:
                self.process.qmp.execute("query-status", timeout=2.0)
            except DriverError:
                if not self.process.wait_exit(2.0):
                    return "it does not answer QMP"
        if self.process is not None and not self.is_running:
            return self._exited("between tests").message.splitlines()[0]
        if self._console is not None and self._console.fatal.last is not None:
            return f"its console showed {self._console.fatal.last.pattern!r}"
        return None

    # --- power -----------------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.running

    def on(self) -> None:
        """Launch QEMU and wait until the board is ready (its shell or U-Boot prompt)."""
        self.require_started("on()")
        if self.is_running:
            return
        if self.process is not None:
            self.off()
        accel: str = self.config.accel
        if accel == "auto":
            accel = ACCEL_CHOICES.choose(self.command_line("kvm"), self._boots_with_kvm)
        self._check_files()  # a missing kernel is named as such, before the cache hashes it
        restored = self.warm.restore(accel)  # the booted state from the cache: no boot to wait for
        if not restored:
            self._launch(accel)
        try:
            if not restored:
                start = time.monotonic()
                self._wait_ready("while booting")
                self.timings["ready"] = self.timings.get("launch", 0.0) + time.monotonic() - start
                self.warm.save(accel)
            if self._snapshots.wanted:
                self._snapshots.save(self, self.config.console_timeout, self.config.boot_timeout)
        except BaseException:
            self.off()
            raise

    def off(self) -> None:
        """Power off, bounded: ACPI powerdown if configured, then QMP quit, SIGTERM, SIGKILL."""
        try:
            if self.process is not None:
                self.process.stop(self.config.powerdown_timeout, self._drain_console)
        finally:
            if self._console is not None:
                self._console.close()
                self._console = None

    def cycle(self) -> None:
        """Power off, then on (a fresh QEMU process: booted, or started from the cached booted state)."""
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
        shell = self.console.shell
        return (
            shell if isinstance(shell, UBootShell) else UBootShell(self.console, self.config.shell_settings)
        )

    @property
    def shell_settings(self) -> ShellSettings:
        """The console shell's settings (prompt, login, fatal patterns, stages)."""
        return self.config.shell_settings

    def boot_to(self, stage: str) -> None:
        """Bring the board to boot stage ``stage`` (``shell`` at power-on, or one of ``stages``)."""
        _stages.boot_to(self, stage)

    def _expected_restart(self) -> None:
        """We restarted the board ourselves: old text and events are history, the first stage is back."""
        if self._console is not None:
            self._console.fatal.skip_seen()
            self._console.shell = _stages.make_shell(self, self.shell_kind)
        self.stage = self.shell_kind
        self._restarts.expected(self.events, self._console)

    def _watch_events(self) -> BaseException | None:
        """Console watch: a RESET or SHUTDOWN the board did not ask for ends a shell command at once."""
        return self._restarts.news(self.events, self._console, self._gone_after_shutdown)

    def _gone_after_shutdown(self) -> BaseException | None:
        if self.process is not None and self.process.wait_exit(2.0):
            return self._exited("while the console was in use")
        return None

    def sync_console(self, timeout: float, command: str = "true") -> None:
        """Prove the shell answers, and leave the console just past its next prompt (as after boot)."""
        if self.stage == "uboot" or isinstance(self.console.shell, UBootShell):
            self.uboot.sync(timeout)
            return
        result = _stages.make_shell(self, "linux").run(f"{command} >/dev/null 2>&1; true", timeout=timeout)
        if result.status != 0:
            raise DriverError(self.device_name, f"the shell answered {command!r} with status {result.status}")
        if not self.config.ready:
            self.console.expect(self.ready_pattern, timeout=timeout)

    def _wait_ready(self, context: str, timeout: float | None = None) -> None:
        timeout = self.config.boot_timeout if timeout is None else timeout
        with self.ctx.activity("booting"):  # a line whose elapsed time ticks (a test's reset() too)
            if self.shell_kind == "uboot" and not self.config.ready:
                self.uboot.interrupt(timeout)
            else:
                self.console.expect(self.ready_pattern, timeout=timeout)
                if self.config.shell_settings.login is not None and self.shell_kind == "linux":
                    self.console.shell.login()
        self._restarts.expected(self.events, self._console)  # a boot's RESETs (SeaBIOS's) are its own
        self.ctx.progress(f"{self.device_name}: ready {context}")

    def _drain_console(self) -> None:
        """Read whatever the console holds, without waiting for more; a closed console is fine here."""
        if self._console is None:
            return
        with contextlib.suppress(Exception):
            self._console.drain(quiet=0.0, limit=0.5)

    def _on_console_eof(self) -> BaseException | None:
        """The console ended: QEMU exited (or is about to).  Say so, with its status and stderr."""
        if self.process is None:
            return None
        self.process.wait_exit(2.0)
        return self._exited("while the console was in use")

    def _on_console_timeout(self) -> str | None:
        """A console wait timed out: is the guest running at all (paused on a full disk, stopped)?"""
        process = self.process
        return diagnose(process.pid, process.qmp, self.events) if process is not None else None

    def _exited(self, context: str) -> DeviceExited:
        assert self.process is not None
        return self.process.exited(context, self._console.tail() if self._console is not None else "")

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

    # --- display (display: true) -----------------------------------------------------------------

    @property
    def has_display(self) -> bool:
        return self.config.display

    def screenshot(self, path: Path | None = None) -> Path:
        """The screen as a PNG at ``path`` (default: a new file in the device's folder)."""
        from .screen import board_screenshot

        return board_screenshot(self, path)

    def _require_qmp(self, what: str) -> Qmp:
        process = self.process
        if process is None or process.qmp is None or not process.running:
            if process is not None and process.child is not None and not process.running:
                raise self._exited(f"before QMP {what!r}")
            raise DeviceStateError(
                self.device_name, f"QMP {what!r} needs a powered-on board; it is off (call on())"
            )
        return process.qmp

    # --- storage ---------------------------------------------------------------------------------

    def disk_path(self, name: str) -> Path:
        """The per-run file the VM uses for disk ``name`` (base images are never written)."""
        return self._disks.path(name)

    def disk_format(self, name: str) -> Literal["raw", "qcow2"]:
        return self._disks.format(name)

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
        self._disks.set(name, path, fmt)

    # --- snapshots (reset: snapshot) ------------------------------------------------------------

    @property
    def snapshot_error(self) -> str | None:
        """Why the booted state could not be saved (so ``reset: snapshot`` cold boots), else None."""
        return self._snapshots.error

    def restore_snapshot(self) -> str | None:
        """Bring the running board back to the state saved after boot (HMP ``loadvm``, in place).

        Returns ``None`` when restored, else why not (the caller then needs a cold boot).
        """
        return self._snapshots.restore(self, self.config.console_timeout, self.config.boot_timeout)

    # --- memory ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The QEMU process id while it runs."""
        return self.process.pid if self.process is not None and self.is_running else None

    def rss(self, peak: bool = False) -> int | None:
        """QEMU's resident memory in bytes (``VmRSS``, or its peak ``VmHWM``); None while off."""
        pid = self.pid
        return None if pid is None else process_memory(pid, peak)

    # --- networking ------------------------------------------------------------------------------

    @property
    def tftp_root(self) -> Path | None:
        """The per-run folder slirp's TFTP server serves (``network: {tftp: true}``), else None."""
        return self._tftp_root

    @property
    def guest_address(self) -> str | None:
        """An address the host can reach the guest at; None with user-mode networking (use forwards)."""
        network = self.config.user_network
        return network.address if network is not None else None

    @property
    def forwards(self) -> dict[str, int]:
        """name -> host port of each ``network.forwards`` entry, read back after the last launch."""
        return self._net.forwards

    def forward(self, name: str) -> int:
        """The host port (on 127.0.0.1) forwarded to the guest port named ``name`` in ``network.forwards``."""
        return self._net.forward(name)

    def hostfwd_add(self, guest_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> int:
        """Forward a free host port to ``guest_port`` (slirp picks it; read back over QMP); return it."""
        return self._net.add(guest_port, proto, host)

    def hostfwd_remove(self, host_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> None:
        self._net.remove(host_port, proto, host)

    # --- the process -----------------------------------------------------------------------------

    def command_line(self, accel: str = "tcg") -> list[str]:
        """The qemu-system command line (without the console/QMP sockets, which are per launch)."""
        files = []
        for disk in self._disks:
            if disk.path is None:
                raise DeviceStateError(
                    self.device_name, f"disk {disk.name!r} has no file: start() the device first"
                )
            files.append(DiskFile(disk.name, disk.format, disk.path))
        run = RunFiles(
            name=f"{self.ctx.target}/{self.device_name}",
            disks=files,
            tftp_root=self._tftp_root,
            state_drive=self._snapshots.state_drive,
        )
        return command_line(self.config, run, accel)

    def _check_files(self) -> None:
        missing = self.config.missing_file(self.ctx.source)
        if missing is not None:
            raise DriverError(self.device_name, missing)

    def _launch(self, accel: str, incoming: Path | None = None) -> None:
        """Start QEMU paused, connect its console and QMP, let it run.  On any failure nothing is left.

        ``incoming``: a booted state (:mod:`.warm`) to load before it runs."""
        try:
            self._check_files()
            self.events = Events()
            command = self.command_line(accel) + (["-incoming", "defer"] if incoming else [])
            self.process = process = QemuProcess.launch(
                self.device_name, command, self.ctx.workdir, self.ctx.progress
            )
            assert process.qmp is not None and process.console_sock is not None
            self.events = process.qmp.events
            self._restarts = RestartWatch(self.device_name)
            self._console = Console(
                SocketTransport(process.console_sock),
                device=self.device_name,
                timeout=self.config.console_timeout,
                logfile_read=self.ctx.transcript,
                fatal_patterns=_stages.fatal_patterns(self.shell_kind, self.config.shell_settings),
                on_eof=self._on_console_eof,
                watch=self._watch_events,
                on_timeout=self._on_console_timeout,
            )
            self._console.shell = _stages.make_shell(self, self.shell_kind)
            self.stage = self.shell_kind
            if incoming is not None:
                receive_state(process.qmp, incoming, self.config.boot_timeout, self.device_name)
            self._net.read_forwards()
            process.qmp.execute("cont", timeout=5.0)
            self.accel = accel
            self.boots += 1
            self.timings = {"launch": time.monotonic() - process.launched}
        except BaseException:
            self.off()
            raise

    def _boots_with_kvm(self) -> bool:
        """``accel: auto``'s probe: does this board boot with KVM?  (It is off again afterwards.)"""
        try:
            self._launch("kvm")
            # A guest that hangs under KVM must not cost the whole boot timeout on every run.
            self._wait_ready("(KVM probe)", min(30.0, self.config.boot_timeout))
            return True
        except DriverError as exc:
            self.ctx.progress(f"{self.device_name}: KVM did not boot ({str(exc).splitlines()[0]}); using TCG")
            return False
        finally:
            self.off()
