"""Booted states kept across runs: a folder of entries, one per cache key, written so readers never see half.

An entry is a folder ``<dir>/<key>/`` holding ``state`` (a QEMU migration stream) and ``meta.json``
(what the key was made of, the state's size, when it was saved).  It appears by ``rename`` of a
finished temp folder, so a reader sees a whole entry or none.  A writer holds ``<dir>/<key>.lock``
(``flock``, not waited for): two workers that miss at once do not both write; the second just runs
on its cold boot.  Entries are evicted least recently used first (a hit touches ``meta.json``) when
there are more than ``max_entries`` or they use more than ``max_bytes``.

Nothing here knows QEMU: :mod:`.warm` decides the key and what goes into an entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_jumpstarter.workfiles import file_sha256

#: Bumped when what an entry holds, or how it is restored, changes: older entries then miss.
STATE_FORMAT = 1
DEFAULT_MAX_ENTRIES = 8
DEFAULT_MAX_BYTES = 2 * 1024**3


def default_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/pytest-jumpstarter/boards``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-jumpstarter" / "boards"


def make_key(parts: Mapping[str, Any]) -> str:
    """The key of everything that decides a booted state (``parts`` must be JSON-able)."""
    text = json.dumps({"format": STATE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _identity(path: Path) -> list[int]:
    """What changes whenever a file's content may have: any write sets ``ctime`` to now, and no
    tool can set it back (``cp -p`` and ``touch -d`` restore ``mtime`` only)."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class FileFacts:
    """Values computed from files (a content hash, a ``--version`` line), kept in a JSON file across
    runs and valid while the file's :func:`_identity` is unchanged: a run's first start then does
    not re-read a 14 MB kernel (~20 ms) or run ``qemu --version`` (~20 ms) to make its cache key."""

    #: The store's file name in a cache folder.
    NAME = "files.json"
    #: A file changed this recently is not memoized: file times come from a coarse clock (a few
    #: ms), so a second write in the same tick could leave all of its identity unchanged.
    SETTLE_NS = 2_000_000_000

    def __init__(self, store: Path | None, write: bool = True) -> None:
        self.store = store
        self.write = write  # False: read the store, never add to it (--jumpstarter-cache=read)
        self._facts: dict[str, list[Any]] | None = None

    def get(self, path: Path, kind: str, compute: Callable[[Path], str]) -> str:
        identity = _identity(path)
        name = f"{kind}:{path.resolve()}"
        for facts in (_MEMO, self._load()):  # this process's, then earlier runs'
            known = facts.get(name)
            if isinstance(known, list) and known[:-1] == identity and isinstance(known[-1], str):
                return known[-1]
        value = compute(path)
        if time.time_ns() - identity[-1] >= self.SETTLE_NS:
            _MEMO[name] = [*identity, value]
            self._save(name, _MEMO[name])
        return value

    def _load(self) -> dict[str, list[Any]]:
        if self._facts is None:
            self._facts = {} if self.store is None else _read_facts(self.store)
        return self._facts

    def _save(self, name: str, row: list[Any]) -> None:
        if self.store is None or not self.write:
            return
        with contextlib.suppress(OSError):  # a memo: losing it costs a recomputation, nothing else
            self.store.parent.mkdir(parents=True, exist_ok=True)
            merged = {**_read_facts(self.store), name: row}  # keep what another run added meanwhile
            tmp = self.store.with_name(f".{self.store.name}-{os.getpid()}")
            tmp.write_text(json.dumps(merged, sort_keys=True))
            os.replace(tmp, self.store)


_MEMO: dict[str, list[Any]] = {}


def _read_facts(store: Path) -> dict[str, list[Any]]:
    try:
        facts = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def file_hash(path: Path, facts: FileFacts | None = None) -> str:
    """sha256 of a file's content (memoized in ``facts``, else per process)."""
    return (facts or FileFacts(None)).get(path, "sha256", file_sha256)


@dataclass(frozen=True)
class Entry:
    """One complete entry."""

    key: str
    folder: Path
    meta: dict[str, Any]

    @property
    def state(self) -> Path:
        return self.folder / "state"

    @property
    def size(self) -> int:
        return int(self.meta.get("size", 0))


class StateCache:
    """The entries in ``folder`` (made on first write)."""

    def __init__(
        self, folder: Path, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.folder = folder
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def lookup(self, key: str, parts: Mapping[str, Any]) -> tuple[Entry | None, str | None]:
        """``(entry, None)`` on a hit; ``(None, why)`` for an entry found unusable (then deleted);
        ``(None, None)`` when there is none."""
        folder = self.folder / key
        if not folder.is_dir():
            return None, None
        problem = None
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            meta, problem = {}, f"its meta.json is unreadable ({exc})"
        if problem is None:
            state = folder / "state"
            size = state.stat().st_size if state.exists() else None
            if meta.get("format") != STATE_FORMAT or meta.get("parts") != json.loads(
                json.dumps(parts, default=str)
            ):
                problem = "it was saved for another QEMU, board or state format"
            elif size is None:
                problem = "its state file is missing"
            elif size != meta.get("size"):
                problem = f"its state file is truncated ({size} of {meta.get('size')} bytes)"
        if problem is not None:
            self.delete(key)
            return None, f"cache entry {key} was unusable: {problem}; deleted"
        with contextlib.suppress(OSError):
            os.utime(folder / "meta.json")  # least recently used goes first
        return Entry(key, folder, meta), None

    def peek(self, key: str) -> Entry | None:
        """The entry for ``key`` if one looks complete (no checks, no touch): for listings."""
        try:
            meta = json.loads((self.folder / key / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return Entry(key, self.folder / key, meta)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[Path | None]:
        """A temp folder to fill (write ``state`` into it), published as the entry on success; None
        when another writer holds this key or the entry exists (nothing to do)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{key}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            if (self.folder / key).is_dir():
                yield None
                return
            tmp = self.folder / f".tmp-{key}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                yield tmp
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if not (tmp / "state").exists():
                shutil.rmtree(tmp, ignore_errors=True)
                return
            os.rename(tmp, self.folder / key)
        self.evict(keep=key)

    def publish_meta(self, tmp: Path, parts: Mapping[str, Any], **more: Any) -> None:
        """Write ``meta.json`` of a temp entry whose ``state`` is complete."""
        size = (tmp / "state").stat().st_size
        meta = {"format": STATE_FORMAT, "parts": parts, "size": size, "saved": time.time(), **more}
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, default=str, indent=1))

    def entries(self) -> list[Entry]:
        found: list[Entry] = []
        if not self.folder.is_dir():
            return found
        for folder in self.folder.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                entry = self.peek(folder.name)
                if entry is not None:
                    found.append(entry)
        return found

    def usage(self) -> tuple[int, int]:
        """(entries, bytes on disk)."""
        entries = self.entries()
        return len(entries), sum(_disk_bytes(e.state) for e in entries)

    def evict(self, keep: str | None = None) -> list[str]:
        """Delete least recently used entries beyond the bounds; return their keys."""

        def used(entry: Entry) -> float:
            try:
                return (entry.folder / "meta.json").stat().st_mtime
            except OSError:
                return 0.0

        entries = sorted(self.entries(), key=used, reverse=True)  # newest first
        kept, total, gone = 0, 0, []
        for entry in entries:
            size = _disk_bytes(entry.state)
            if entry.key == keep or (kept < self.max_entries and total + size <= self.max_bytes):
                kept, total = kept + 1, total + size
                continue
            self.delete(entry.key)
            gone.append(entry.key)
        return gone

    def delete(self, key: str) -> None:
        """Remove an entry: renamed away first, so no reader opens a half-deleted one."""
        folder = self.folder / key
        trash = self.folder / f".trash-{key}-{os.getpid()}-{time.monotonic_ns()}"
        with contextlib.suppress(OSError):
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def clear(self) -> int:
        """Delete every entry (and leftovers of interrupted writers); return how many entries went."""
        count = 0
        if not self.folder.is_dir():
            return 0
        for path in self.folder.iterdir():
            if path.name.endswith(".lock") or FileFacts.NAME in path.name:
                path.unlink(missing_ok=True)
            elif path.is_dir() and path.name.startswith("."):  # an interrupted writer's or deleter's
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir():
                self.delete(path.name)
                count += 1
        return count


def _disk_bytes(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0
