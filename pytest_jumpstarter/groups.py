"""``--dist loadgroup``: tests that share a kept or exclusive device go to one xdist worker.

The plugin marks each such test with ``xdist_group`` as it is collected (:func:`selection.xdist_group`
names the group).  xdist hands the group to its controller as a suffix of the node id: the worker's
``pytest_collection_modifyitems`` rewrites ``item._nodeid`` to ``...[t]@group`` and the controller's
scheduler splits it off again.  pytest 9.2 keeps node ids structured (``Node._id``), so that rewrite
no longer takes effect and every test is scheduled alone (pytest-xdist issue #1386, xdist 3.8).

So in a worker, when the ids it is about to send lack the suffix, the plugin adds it for exactly that
message (``pytest_collection_finish``, where xdist sends the ids) and puts the ids back right after.
The tests run and report under their plain ids: JUnit names, reruns and log folders do not change
with ``--dist``.  Where xdist's own rewrite works (older pytest, a fixed xdist) the ids already end in
the suffix and nothing is done.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from _pytest.nodeid import NodeId

    from .plugin import Run


class GroupPlugin:
    def __init__(self, run: Run) -> None:
        self.run = run

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        # Added as the item is collected: xdist reads the markers in its own
        # pytest_collection_modifyitems, which may run before any of ours.
        from .plugin import TARGET_FIXTURE
        from .selection import xdist_group

        name = getattr(getattr(item, "callspec", None), "params", {}).get(TARGET_FIXTURE)
        target = next((t for t in self.run.targets if t.name == name), None)
        group = xdist_group(item, target) if target is not None else None
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))

    @pytest.hookimpl(wrapper=True)
    def pytest_collection_finish(self, session: pytest.Session) -> Generator[None]:
        config = session.config
        if not hasattr(config, "workerinput") or not config.getvalue("loadgroup"):
            return (yield)
        plain = [(item, suffix_id(item)) for item in session.items]
        originals = [(item, item._id) for item, new in plain if new is not None]
        for item, new in plain:
            if new is not None:
                item._id = new
        try:
            return (yield)
        finally:
            for item, original in originals:
                item._id = original


def group_suffix(item: pytest.Item) -> str | None:
    """The ``@group`` xdist puts after the node id of ``item`` (its rule: the sorted names, ``_``-joined)."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    return "@" + "_".join(sorted(names)) if names else None


def suffix_id(item: pytest.Item) -> NodeId | None:
    """``item``'s structured node id with its group suffix, or None if it has no group, already carries
    the suffix, or this pytest has no structured ids (there xdist's own rewrite works)."""
    suffix = group_suffix(item)
    if suffix is None or item.nodeid.endswith(suffix):
        return None
    try:
        from _pytest.nodeid import NodeId as Structured  # pytest >= 9.2
    except ImportError:  # pragma: no cover - older pytest: xdist rewrote the id already
        return None
    return Structured.parse(item.nodeid + suffix)
