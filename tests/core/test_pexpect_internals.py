"""The parts of pexpect that pytest_jumpstarter.console uses beyond its public API.

Console subclasses ``pexpect.spawnbase.SpawnBase`` and resets its buffers, and ``_WindowedExpecter``
subclasses ``pexpect.expect.Expecter`` and reads ``searcher_re._searches``.  pyproject.toml pins
``pexpect<5``; if a release within that range moves one of these, this fails naming it.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pexpect
from pexpect.expect import Expecter, searcher_re
from pexpect.spawnbase import SpawnBase


class Scripted(SpawnBase):  # type: ignore[misc]
    """A spawn that reads from a list, as Console reads from its transport."""

    def __init__(self, chunks: list[str]) -> None:
        super().__init__(
            timeout=1, maxread=100, searchwindowsize=None, encoding="utf-8", codec_errors="replace"
        )
        self.chunks = chunks

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> str:
        if not self.chunks:
            raise pexpect.TIMEOUT("no more")
        return self.chunks.pop(0)


def test_spawnbase_takes_the_constructor_arguments_console_passes() -> None:
    params = inspect.signature(SpawnBase.__init__).parameters
    for name in ("timeout", "maxread", "searchwindowsize", "encoding", "codec_errors"):
        assert name in params, f"SpawnBase.__init__ lost {name!r}"


def test_spawnbase_keeps_the_buffers_console_reads_and_resets() -> None:
    spawn = Scripted([])
    for name in ("_before", "_buffer", "buffer_type", "_decoder", "delayafterread", "flag_eof", "linesep"):
        assert hasattr(spawn, name), f"SpawnBase has no {name!r} any more"
    assert spawn.maxread == 100
    assert spawn._buffer.getvalue() == "" and spawn._before.getvalue() == ""
    assert isinstance(spawn.buffer_type(), type(spawn._buffer))
    spawn._buffer.write("abc")
    assert spawn.buffer == "abc"  # ``buffer`` is a view of ``_buffer``...
    spawn.buffer = ""
    assert spawn._buffer.getvalue() == ""  # ...and assigning it replaces ``_buffer``
    assert spawn._decoder.decode(b"\xc3", final=False) == "" and spawn._decoder.decode(b"\xa9") == "\u00e9"


def test_expect_methods_take_the_arguments_console_forwards() -> None:
    for method in (SpawnBase.expect_list, SpawnBase.expect_exact):
        params = list(inspect.signature(method).parameters)
        assert params[:5] == ["self", "pattern_list", "timeout", "searchwindowsize", "async_"], method
        assert inspect.signature(method).parameters[params[-1]].kind is inspect.Parameter.VAR_KEYWORD


def test_searcher_re_exposes_its_compiled_patterns_and_match_fields() -> None:
    patterns = [re.compile("b+"), pexpect.TIMEOUT, re.compile("c")]
    searcher = searcher_re(patterns)
    assert searcher._searches == [(0, patterns[0]), (2, patterns[2])]
    # _WindowedExpecter sets these itself, as a search does, for whoever reads them after a match.
    assert searcher.search("abbbc", 5) == 0
    assert (searcher.start, searcher.end, searcher.match.group(0)) == (1, 4, "bbb")


def test_expect_loop_hands_each_read_to_new_data_and_returns_its_index() -> None:
    seen: list[str] = []

    class Recording(Expecter):  # type: ignore[misc]
        def new_data(self, data: str) -> Any:
            seen.append(data)
            return 0 if "done" in data else None

    spawn = Scripted(["one ", "two ", "done"])
    expecter = Recording(spawn, searcher_re([re.compile("done")]), None)
    assert expecter.spawn is spawn and isinstance(expecter.searcher, searcher_re)
    assert expecter.expect_loop(1) == 0
    assert seen == ["one ", "two ", "done"]
