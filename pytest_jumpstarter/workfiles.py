"""The files a run owns outside pytest's basetemp: its work root and socket folders, and the sweep
that removes those of runs that died without cleaning up (SIGKILL, a killed xdist worker,
pytest-timeout's thread method).

Each such folder holds an owner record (:data:`OWNER_FILE`: pid, process start time, boot id), so a
later run can tell for certain that the owner is dead (its pid is gone or is a newer process, or the
machine has rebooted) and sweep the folder at start.  A folder whose owner may be alive is never
touched.  Also here: checking at start that the log and lock folders are usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import FolderError
from .locking import boot_id, process_start

OWNER_FILE = ".jumpstarter-owner"
#: Prefixes of the folders made with :func:`owned_tempdir` (the sweep looks only at these).
PREFIXES = ("pytest-jumpstarter-", "jsq-", "jsnet-")
#: The longest AF_UNIX path the kernel takes (108 bytes with the terminating NUL).
UNIX_PATH_MAX = 107


def owned_tempdir(prefix: str, base: Path | None = None) -> Path:
    """A new private folder under ``base`` (default: the temp folder) with this process's owner record."""
    if not prefix.startswith(PREFIXES):
        raise ValueError(f"prefix {prefix!r} is not one the sweep knows: {PREFIXES}")
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    record = {"pid": os.getpid(), "start": process_start(os.getpid()), "boot": boot_id()}
    (folder / OWNER_FILE).write_text(json.dumps(record))
    return folder


def socket_dir(prefix: str, longest_name: int = 16) -> Path:
    """An owned folder for unix sockets whose names are up to ``longest_name`` bytes long.

    In the temp folder if the socket paths fit there, else in the first of /tmp, /dev/shm and
    $XDG_RUNTIME_DIR where they fit: a long $TMPDIR must not make every board fail.
    """
    need = len(prefix) + 8 + 1 + longest_name  # mkdtemp adds 8 characters
    candidates = [tempfile.gettempdir(), "/tmp", "/dev/shm", os.environ.get("XDG_RUNTIME_DIR", "")]
    tried = []
    for base in dict.fromkeys(c for c in candidates if c):
        if len(os.fsencode(base)) + 1 + need > UNIX_PATH_MAX:
            tried.append(f"{base} (too long)")
        elif not os.access(base, os.W_OK | os.X_OK):
            tried.append(f"{base} (not writable)")
        else:
            return owned_tempdir(prefix, Path(base))
    raise FolderError(
        f"no folder where a unix socket path fits in {UNIX_PATH_MAX} bytes: tried {', '.join(tried)}; "
        "set TMPDIR to a short writable folder"
    )


def owner_is_dead(folder: Path) -> bool:
    """Whether ``folder``'s owner record proves its owner dead (no record proves nothing)."""
    try:
        record = json.loads((folder / OWNER_FILE).read_text())
        pid, start, boot = int(record["pid"]), str(record["start"]), str(record["boot"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if boot != boot_id():
        return True  # the machine has rebooted since: every process of that boot is gone
    return process_start(pid) != start


def dead_runs_folders(base: Path | None = None) -> Iterator[Path]:
    """The owned folders under ``base`` (default: the temp folders) whose owners are dead."""
    defaults = (tempfile.gettempdir(), "/tmp", "/dev/shm")
    bases = [base] if base is not None else list(dict.fromkeys(Path(p) for p in defaults))
    for folder_base in bases:
        try:
            entries = list(os.scandir(folder_base))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(PREFIXES) and entry.is_dir(follow_symlinks=False):
                path = Path(entry.path)
                if owner_is_dead(path):
                    yield path


def sweep(base: Path | None = None) -> list[Path]:
    """Remove the folders of dead runs; return what was removed."""
    swept = []
    for folder in dead_runs_folders(base):
        # Another run may sweep the same folder at the same moment: whoever gets there first wins.
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            swept.append(folder)
    return swept


def check_folder(path: Path, option: str, purpose: str) -> None:
    """Make sure ``path`` is (or can be made) a folder we can write ``purpose`` into, or say why not."""
    what = f"{option} {path}"
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"is under {parent}, which is a file"
            raise FolderError(f"{what} cannot hold {purpose}: it {where}; give a folder")
        if parent.exists():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".jumpstarter-probe-")  # noqa: SIM115
        probe.close()
    except OSError as exc:
        raise FolderError(
            f"{what} cannot hold {purpose}: {exc.strerror or exc}; give a writable folder"
        ) from exc


def check_run_folders(logdir: Path | None, lock_dir: Path | None) -> None:
    """At start: the log folder (if one was given) and the lock folder (if leases are needed) are usable."""
    if logdir is not None:
        check_folder(logdir, "--jumpstarter-logdir", "console logs")
    if lock_dir is not None:
        check_folder(lock_dir, "--jumpstarter-lock-dir / $JUMPSTARTER_LOCK_DIR", "leases")


def file_sha256(path: Path, size: int | None = None) -> str:
    """The sha256 (hex) of a file's content, or of its first ``size`` bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    left = size
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()
