"""Boot stages: how a board goes from power-on (its ``shell``) through a bootloader to an OS.

A board's target file names its stages (:class:`~pytest_jumpstarter.shell_settings.BootStage`);
``board.boot_to("linux")`` types each stage's commands at the stage before it (the last command
boots, so nothing waits for its prompt), waits for the new stage's prompt, and swaps the console's
shell helper.  A board in a stage that is not on the way (Linux, asked for U-Boot) is reset first.
A test can ask with the marker ``@pytest.mark.boot_stage("linux")``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import BoardReset, DriverError
from .fatal import LINUX_FATAL, FatalPattern
from .linux import LinuxShell
from .shell import Shell
from .shell_settings import ShellSettings
from .uboot import UBootShell

if TYPE_CHECKING:
    from .console import Console


class StagedBoard(Protocol):
    """What :func:`boot_to` needs of a board."""

    stage: str

    @property
    def shell_kind(self) -> str: ...

    @property
    def device_name(self) -> str: ...

    @property
    def console(self) -> Console: ...

    @property
    def shell_settings(self) -> ShellSettings: ...

    @property
    def tftp_root(self) -> Path | None: ...

    def reset(self) -> None: ...


def fatal_patterns(first: str, settings: ShellSettings) -> list[FatalPattern]:
    """The fatal patterns of a board's console: each of its shells' defaults, then the target file's."""
    kinds = {first, *(stage.shell for stage in settings.stages.values())}
    patterns: list[FatalPattern] = []
    if "uboot" in kinds:
        patterns += UBootShell.fatal
    if "linux" in kinds:
        patterns += LINUX_FATAL
    return patterns + [FatalPattern(p) for p in settings.fatal_patterns]


def make_shell(board: StagedBoard, kind: str) -> Shell:
    """The shell helper of ``kind`` on the board's console, with the board's shell settings."""
    return shell_for(board.console, kind, board.shell_kind, board.shell_settings)


def shell_for(console: Console, kind: str, first: str, settings: ShellSettings) -> Shell:
    """The shell helper of ``kind`` on ``console``, for a board whose first stage is ``first``."""
    if kind == "uboot":
        # prompt:/login: describe the board's OS shell unless its first stage is U-Boot.
        own = settings if first == "uboot" else ShellSettings(interrupt=settings.interrupt)
        return UBootShell(console, own)
    return LinuxShell(console, settings)


def unexpected_restart(device: str, shown: str, console: Console | None) -> BoardReset:
    return BoardReset(device, "", shown, console.tail() if console is not None else "")


def path_to(board: StagedBoard, stage: str) -> list[str]:
    """The stages from the first one to ``stage``, first one included."""
    stages = board.shell_settings.stages
    path = [stage]
    while path[-1] != board.shell_kind:
        current = stages.get(path[-1])
        if current is None:
            known = ", ".join([board.shell_kind, *stages])
            raise DriverError(board.device_name, f"no boot stage {path[-1]!r} (it has: {known})")
        if current.boots_from in path:
            raise DriverError(board.device_name, f"boot stages loop at {current.boots_from!r}")
        path.append(current.boots_from)
    return path[::-1]


def boot_to(board: StagedBoard, stage: str) -> None:
    """Bring ``board`` to ``stage`` (see the module docstring)."""
    path = path_to(board, stage)
    if board.stage == stage:
        return
    if board.stage not in path:
        board.reset()  # back to the first stage
    for step in path[path.index(board.stage) + 1 :]:
        spec = board.shell_settings.stages[step]
        if spec.tftp:
            root = board.tftp_root
            if root is None:
                raise DriverError(
                    board.device_name, f"boot stage {step!r} has tftp files: the board has no TFTP folder"
                )
            for name, source in spec.tftp.items():
                shutil.copyfile(source, root / name)
        console = board.console
        shell = console.shell
        *setup, last = spec.commands or [""]
        for command in setup:
            result = shell.run(command, timeout=spec.timeout)
            if not result.ok:
                raise DriverError(
                    board.device_name,
                    f"booting stage {step!r}: {command!r} failed (status {result.status}):\n{result.output}",
                )
        new = make_shell(board, spec.shell)
        # The last command boots: its prompt never comes back, the next stage's does.
        # Watched: a board that resets instead of booting (a QMP RESET event) fails at once.
        try:
            with console.watched():
                shell.raw(last, wait_prompt=False, timeout=spec.timeout)
                console.expect(spec.ready or new.prompt, timeout=spec.timeout)
        except BoardReset as exc:
            raise BoardReset(board.device_name, last, exc.shown, exc.console_tail) from None
        console.shell = new
        if spec.shell == "linux" and board.shell_settings.login is not None:
            new.login()
        board.stage = step
