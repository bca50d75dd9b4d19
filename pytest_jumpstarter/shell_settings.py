"""What a board's target file may say about the shell on its console, and how it boots to it.

:class:`ShellSettings` is a settings group that any board driver can take as its own keys (a settings
dataclass inherits it; a ``Mapping`` declaration adds ``declare(ShellSettings)``):

.. code-block:: yaml

    prompt: '~ # '                       # regex; default: the shell's own (U-Boot '=> ')
    login: {username: root, password: '${ROOT_PASSWORD}', retries: 3}
    fatal_patterns: ['BUG: .*']          # more regexes that end any wait at once
    interrupt: "\\x03"                    # what interrupt() sends (default Ctrl-C)
    line_limit: 511                      # longest command line the shell accepts
    stages:                              # how the board goes from bootloader to OS
      linux: {boots_from: uboot, commands: [dhcp, 'tftpboot ...', zboot ...], shell: linux}
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .settings import setting


@dataclass(frozen=True, kw_only=True)
class LoginSettings:
    """Logging in on a console that asks for a user name (and a password)."""

    username: str = setting(doc="the user to log in as")
    password: str | None = setting(None, doc="its password; write ${VAR} and list VAR under secrets")
    login_prompt: str = setting(r"login: ?$", doc="regex of the user-name prompt")
    password_prompt: str = setting(r"[Pp]assword: ?$", doc="regex of the password prompt")
    retries: int = setting(3, doc="how often to ask again (kernel messages can garble the prompt)")
    timeout: float = setting(30.0, kind="duration", doc="how long one login attempt may take")


@dataclass(frozen=True, kw_only=True)
class BootStage:
    """One step from a stage (``boots_from``) to this one: commands typed there, then a wait for ``ready``."""

    boots_from: str = setting(doc="the stage this one boots from (uboot)")
    commands: list[str] = setting([], doc="typed at the previous stage's shell; the last one boots")
    tftp: dict[str, Path] = setting({}, doc="files put in the board's TFTP folder first: {name: file}")
    shell: str = setting("linux", choices=("linux", "uboot"), doc="the shell this stage has")
    ready: str | None = setting(None, doc="regex that means this stage is up (default: its prompt)")
    timeout: float = setting(120.0, kind="duration", doc="how long the boot may take")


@dataclass(frozen=True, kw_only=True)
class ShellSettings:
    """Console shell keys shared by board drivers (see the module docstring)."""

    prompt: str | None = setting(None, doc="regex of the shell prompt (default: the shell's own)")
    login: LoginSettings | None = setting(None, doc="log in at start: {username, password, ...}")
    fatal_patterns: list[str] = setting([], doc="more regexes that end any console wait at once")
    interrupt: str = setting("\x03", doc="what interrupt() sends (default Ctrl-C)")
    line_limit: int = setting(0, doc="longest command line the shell takes (0: its default; U-Boot 511)")
    resync_timeout: float = setting(
        5.0, kind="duration", doc="after a timed-out command: how long to get the prompt back"
    )
    stages: dict[str, BootStage] = setting(
        {}, doc="boot stages by name: {boots_from, commands, shell, ready}"
    )


def check_shell(settings: ShellSettings, first_stage: str) -> Iterable[tuple[str, str]]:
    """Problems in ``settings``: regexes that do not compile, stages that start nowhere."""
    regexes = [("prompt", settings.prompt)] + [("fatal_patterns", p) for p in settings.fatal_patterns]
    if settings.login is not None:
        regexes += [("login.login_prompt", settings.login.login_prompt)]
        regexes += [("login.password_prompt", settings.login.password_prompt)]
    for name, stage in settings.stages.items():
        regexes.append((f"stages.{name}.ready", stage.ready))
        known = {first_stage, *settings.stages} - {name}
        if stage.boots_from not in known:
            yield (
                f"stages.{name}.boots_from",
                f"expected one of {', '.join(sorted(known))}, found {stage.boots_from!r}",
            )
    for key, regex in regexes:
        if regex is None:
            continue
        try:
            re.compile(regex)
        except re.error as exc:
            yield key, f"expected a regular expression, found {regex!r} ({exc})"
