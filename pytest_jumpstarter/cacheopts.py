"""Options of the booted-state cache (``--jumpstarter-cache`` and friends, each with its ini key).

The plugin only reads them and hands them to drivers through ``DeviceContext.extra``
(``cache_mode``, ``cache_dir``, ``cache_clear``); a driver that can keep its booted state (the QEMU
board, see ``pytest_jumpstarter_qemu.statecache``) decides what to do with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

#: --jumpstarter-cache (and its ini key): how boards that can keep their booted state use it.
CACHE_MODES = ("off", "read", "write", "on")


def add_cache_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    """Booted state kept across runs (a driver that can, the QEMU board, reads them from ctx.extra)."""
    helps = {
        "jumpstarter_cache": "booted states kept across runs: on (default), read (use, never write), "
        "write (boot cold, then save), off",
        "jumpstarter_cache_dir": "where booted states are kept "
        "(default: ${XDG_CACHE_HOME:-~/.cache}/pytest-jumpstarter/boards)",
        "jumpstarter_cache_clear": "delete every kept booted state before the run",
    }
    group.addoption(
        "--jumpstarter-cache", dest="jumpstarter_cache", choices=CACHE_MODES, default=None,
        help=helps["jumpstarter_cache"],
    )  # fmt: skip
    group.addoption(
        "--jumpstarter-cache-dir", dest="jumpstarter_cache_dir", metavar="DIR", default=None,
        help=helps["jumpstarter_cache_dir"],
    )  # fmt: skip
    group.addoption(
        "--jumpstarter-cache-clear", dest="jumpstarter_cache_clear", action="store_true", default=None,
        help=helps["jumpstarter_cache_clear"],
    )  # fmt: skip
    parser.addini("jumpstarter_cache", helps["jumpstarter_cache"], default="on")
    parser.addini("jumpstarter_cache_dir", helps["jumpstarter_cache_dir"], default="")
    parser.addini("jumpstarter_cache_clear", helps["jumpstarter_cache_clear"], type="bool", default=False)


def cache_options(config: pytest.Config) -> dict[str, Any]:
    """``cache_mode``, ``cache_dir`` (absolute or None) and ``cache_clear`` of this run: option, else ini."""
    mode = config.option.jumpstarter_cache or str(config.getini("jumpstarter_cache")).strip() or "on"
    if mode not in CACHE_MODES:
        raise pytest.UsageError(f"jumpstarter_cache must be one of {', '.join(CACHE_MODES)}, given: {mode}")
    folder = config.option.jumpstarter_cache_dir
    base = config.invocation_params.dir
    if not folder and config.getini("jumpstarter_cache_dir"):
        folder = config.getini("jumpstarter_cache_dir")
        base = config.inipath.parent if config.inipath else base
    clear = config.option.jumpstarter_cache_clear
    return {
        "cache_mode": mode,
        "cache_dir": (base / Path(folder).expanduser()).resolve() if folder else None,
        "cache_clear": bool(config.getini("jumpstarter_cache_clear") if clear is None else clear),
    }
