"""Command-line options, their ini keys, and living beside another plugin that owns ``--target``.

Every option has an ini key of the same name (``--jumpstarter-logdir`` / ``jumpstarter_logdir``);
the command line wins, then the environment where one is documented, then the ini file.

``--target`` is the short name of ``--jumpstarter-target``.  pytest-embedded defines ``--target``
too, and argparse refuses a second definition, so ``--target`` is added only after every installed
plugin has added its options (at ``pytest_load_initial_conftests``), and only if none took it;
otherwise the run says so in its header and ``--jumpstarter-target`` is the way to name targets.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import pytest

ENV_VAR = "JUMPSTARTER_TARGET"
#: The ini key older configurations use for targets (still read).
INI_TARGETS_LEGACY = "jumpstarter_targets"
#: Who owns ``--target`` when it is not us (shown in the header), kept per run.
TARGET_OWNER = pytest.StashKey[str]()

_TARGET_HELP = (
    "target description (YAML or ini); repeat to run each device test once per target. "
    f"Default: ${ENV_VAR} (paths separated by '{os.pathsep}'), then the jumpstarter_target ini key."
)

#: (flag, dest, ini type, help) of every option besides the target.
OPTIONS: Sequence[tuple[str, str, str, dict[str, Any]]] = (
    (
        "--jumpstarter-list",
        "jumpstarter_list",
        "bool",
        dict(
            action="store_true",
            default=None,
            help="list the targets, their devices and labels, and which collected tests run on each; "
            "run nothing",
        ),
    ),
    (
        "--jumpstarter-logdir",
        "jumpstarter_logdir",
        "string",
        dict(
            metavar="DIR",
            default=None,
            help="where per-test console logs go (DIR/<test id>/<device>.log); "
            "default: under pytest's basetemp",
        ),
    ),
    (
        "--jumpstarter-lock-dir",
        "jumpstarter_lock_dir",
        "string",
        dict(
            metavar="DIR",
            default=None,
            help="where leases of exclusive devices live, shared by every run that may use them "
            "(default: $JUMPSTARTER_LOCK_DIR, else /tmp/pytest-jumpstarter-locks)",
        ),
    ),
    (
        "--jumpstarter-lock-timeout",
        "jumpstarter_lock_timeout",
        "string",
        dict(
            metavar="SECONDS",
            type=float,
            default=None,
            help="how long to wait for an exclusive device another run holds before the test errors "
            "(default: the device's lock_timeout, else 300)",
        ),
    ),
    (
        "--jumpstarter-progress",
        "jumpstarter_progress",
        "string",
        dict(
            choices=("auto", "line", "lines", "off"),
            default=None,
            help="boot, flash and lease progress on the terminal: one updating line (a tty), rate-limited "
            "lines (no tty), or off; default auto (off with -q)",
        ),
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("jumpstarter", "hardware-in-the-loop targets (pytest-jumpstarter)")
    group.addoption(
        "--jumpstarter-target",
        action="append",
        dest="jumpstarter_target",
        default=[],
        metavar="FILE",
        help=_TARGET_HELP + " (--target is the same, unless another plugin owns it)",
    )
    parser.addini(
        "jumpstarter_target", "target description files (relative to the ini file)", type="linelist"
    )
    parser.addini(INI_TARGETS_LEGACY, "the older name of jumpstarter_target", type="linelist", default=[])
    for flag, dest, ini_type, attrs in OPTIONS:
        group.addoption(flag, dest=dest, **attrs)
        parser.addini(dest, f"the ini key of {flag}: {attrs['help']}", type=ini_type, default=None)  # type: ignore[arg-type]
    # The booted-state cache's options (each with its ini key of the same name).
    from .cacheopts import add_cache_options

    add_cache_options(parser, group)


def add_short_target(early_config: pytest.Config, parser: pytest.Parser, args: Sequence[str]) -> None:
    """Add ``--target`` now that every installed plugin has added its options, unless one took it."""
    owner = _owner_of(parser, "--target")
    if owner is not None:
        early_config.stash[TARGET_OWNER] = owner
        return
    parser.getgroup("jumpstarter").addoption(
        "--target", action="append", dest="jumpstarter_target", default=[], metavar="FILE", help=_TARGET_HELP
    )
    # pytest's early parse ran without --target: ``--target board.yaml`` made board.yaml look like a
    # test path for the conftest loading that comes next.  Parse again, knowing it.
    early_config.known_args_namespace = parser.parse_known_args(
        list(args), namespace=copy.copy(early_config.option)
    )


def _owner_of(parser: pytest.Parser, flag: str) -> str | None:
    # The parser has no public view of the options other plugins added; its groups are stable.
    for group in getattr(parser, "_groups", []):
        for option in group.options:
            if flag in option.names():
                return str(group.name)
    return None


def header_note(config: pytest.Config) -> str | None:
    owner = config.stash.get(TARGET_OWNER, None)
    if owner is None:
        return None
    return (
        f"jumpstarter: --target belongs to another plugin (option group {owner!r}); "
        "name targets with --jumpstarter-target"
    )


def value(config: pytest.Config, dest: str) -> Any:
    """An option's value: the command line's, else its ini key's (None when neither is set)."""
    given = getattr(config.option, dest, None)
    if given is not None and given != []:
        return given
    ini = config.getini(dest)
    if ini in (None, "", []):
        return None
    if dest == "jumpstarter_lock_timeout":
        try:
            return float(ini)
        except ValueError:
            raise pytest.UsageError(f"ini key {dest}: expected a number of seconds, found {ini!r}") from None
    return ini
