"""The ``files`` driver (role ``files``): ``put`` and ``get`` of a file or folder, verified on the board.

The channel is the fastest the board has: its ``ssh`` device (``ssh: <device>``) if given, else an
HTTP pull through user networking if the board's ``wget`` reaches a server here, else base64 over
the console.  Whatever the channel, the result is checked with ``sha256sum`` run on the board; a
mismatch is a :class:`~pytest_jumpstarter.errors.TransferError` naming the file, the channel and both
checksums.  A folder travels as one tar file and each of its files is checked.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pytest_jumpstarter.capabilities import HasConsole
from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import TransferError
from pytest_jumpstarter.settings import setting
from pytest_jumpstarter.workfiles import file_sha256

from .channels import Channel, ConsoleChannel, HttpChannel, Shell, SshChannel, SshSession

CHANNELS = ("auto", "ssh", "http", "console")


@dataclass(frozen=True)
class Transfer:
    """What one put or get did."""

    channel: str
    local: Path
    remote: str
    size: int
    files: int
    sha256: str
    duration: float

    @property
    def mib_per_s(self) -> float:
        return self.size / (1024 * 1024) / self.duration if self.duration > 0 else float("inf")


@dataclass(frozen=True, kw_only=True)
class FilesSettings:
    board: str = setting(
        kind="ref", needs=(HasConsole,), doc="the Linux board (its console runs the checks and fallbacks)"
    )
    ssh: str | None = setting(
        None, kind="ref", needs=(SshSession,), doc="an ssh device for that board: the fastest channel"
    )
    channel: str = setting("auto", choices=CHANNELS, doc="auto (fastest available), ssh, http or console")
    host_address: str = setting("10.0.2.2", doc="this host as the board sees it (slirp: 10.0.2.2)")
    progress_from: int = setting(
        8 * 1024 * 1024, kind="size", doc="show progress for transfers from this size"
    )
    scratch: str = setting("/tmp", doc="a folder on the board for a folder's tar file in transit")


class Files(Driver[FilesSettings]):
    """Verified file transfer to and from a Linux board, over the fastest channel it has."""

    name: ClassVar[str] = "files"
    role: ClassVar[str | None] = "files"

    def __init__(self, ctx: DeviceContext[FilesSettings]) -> None:
        super().__init__(ctx)
        self.config = ctx.settings
        self._channel: Channel | None = None
        #: Why faster channels were passed over, e.g. ["ssh: no ssh device", "http: ..."].
        self.fallbacks: list[str] = []

    @property
    def board(self) -> HasConsole:
        return self.ctx.ref("board", HasConsole)

    @property
    def ssh(self) -> SshSession | None:
        return self.ctx.provided("ssh", SshSession)

    def start(self) -> None:
        super().start()
        self._channel = None
        self.fallbacks = []

    # --- the API --------------------------------------------------------------------------------

    @property
    def channel(self) -> str:
        """The channel transfers use (chosen at first use)."""
        return self._pick().name

    def put(self, local: str | os.PathLike[str], remote: str) -> Transfer:
        """Copy ``local`` (a file or a folder) to ``remote`` on the board, and check it there."""
        self.require_started("put()")
        source = Path(local)
        if not source.exists():
            raise TransferError(self.device_name, f"put: {source} does not exist")
        channel = self._pick()
        start = time.monotonic()
        if source.is_dir():
            expected = {rel: file_sha256(source / rel) for rel in _tree(source)}
            tar = self.ctx.workdir / "put.tar"
            self.ctx.workdir.mkdir(parents=True, exist_ok=True)
            _pack(source, tar)
            staged = f"{self.config.scratch}/.jumpstarter-put-{os.getpid()}.tar"
            self._move(channel, "put", tar, staged)
            q, qs = shlex.quote(remote), shlex.quote(staged)
            # No "exit": on a console this runs in the login shell itself.
            unpack = f"mkdir -p {q} && tar -xf {qs} -C {q}; s=$?; rm -f {qs}; [ $s = 0 ]"
            self._shell().run(unpack, 300).check()
            tar.unlink()
            found = self._board_tree(remote)
            self._compare(channel.name, source, remote, expected, found)
            size = sum((source / rel).stat().st_size for rel in expected)
            digest = _tree_digest(expected)
            count = len(expected)
        else:
            size = source.stat().st_size
            local_sum = file_sha256(source)
            self._move(channel, "put", source, remote)
            self._compare_file(channel.name, source, remote, local_sum, self._board_sha256(remote))
            digest, count = local_sum, 1
        return Transfer(channel.name, source, remote, size, count, digest, time.monotonic() - start)

    def get(self, remote: str, local: str | os.PathLike[str]) -> Transfer:
        """Copy ``remote`` (a file or a folder) from the board to ``local``, checked against the board."""
        self.require_started("get()")
        target = Path(local)
        channel = self._pick()
        start = time.monotonic()
        q = shlex.quote(remote)
        kind = self._shell().run(f"if [ -d {q} ]; then echo dir; elif [ -f {q} ]; then echo file; fi", 30)
        if kind.output.strip() == "dir":
            expected = self._board_tree(remote)
            staged = f"{self.config.scratch}/.jumpstarter-get-{os.getpid()}.tar"
            qs = shlex.quote(staged)
            self._shell().run(f"tar -cf {qs} -C {q} .", 300).check()
            tar = self.ctx.workdir / "get.tar"
            self.ctx.workdir.mkdir(parents=True, exist_ok=True)
            try:
                self._move(channel, "get", tar, staged)
            finally:
                self._shell().run(f"rm -f {qs}", 30)
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tar) as archive:
                archive.extractall(target, filter="data")
            tar.unlink()
            found = {rel: file_sha256(target / rel) for rel in _tree(target) if rel in expected}
            self._compare(channel.name, target, remote, expected, found, direction="get")
            size = sum((target / rel).stat().st_size for rel in expected)
            digest, count = _tree_digest(expected), len(expected)
        elif kind.output.strip() == "file":
            board_sum = self._board_sha256(remote)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._move(channel, "get", target, remote)
            self._compare_file(channel.name, target, remote, file_sha256(target), board_sum, direction="get")
            size, digest, count = target.stat().st_size, board_sum, 1
        else:
            raise TransferError(self.device_name, f"get: {remote} is not a file or folder on the board")
        return Transfer(channel.name, target, remote, size, count, digest, time.monotonic() - start)

    # --- channels -------------------------------------------------------------------------------

    def _pick(self) -> Channel:
        if self._channel is not None:
            return self._channel
        wanted, notes = self.config.channel, []
        if wanted in ("auto", "ssh"):
            ssh = self.ssh
            if ssh is not None:
                self._channel = SshChannel(self.device_name, ssh)
                return self._channel
            notes.append("ssh: no ssh device (set ssh: <device>)")
        if wanted in ("auto", "http"):
            http = HttpChannel(self.device_name, self.board.console, self.config.host_address, 256 * 1024)
            why = http.probe()
            if why is None:
                self._channel, self.fallbacks = http, notes
                return http
            notes.append(f"http: {why}")
        if wanted in ("auto", "console"):
            self._channel, self.fallbacks = (
                ConsoleChannel(self.device_name, self.board.console, 20 * 1024),
                notes,
            )
            return self._channel
        raise TransferError(self.device_name, f"channel {wanted!r} is not available: " + "; ".join(notes))

    def _shell(self) -> Shell:
        ssh = self.ssh
        return ssh if ssh is not None else self.board.console

    def _move(self, channel: Channel, direction: str, local: Path, remote: str) -> None:
        total = local.stat().st_size if direction == "put" else None
        name = f"{direction} {local.name if direction == 'put' else remote}"
        shown = [0.0]

        def progress(done: int) -> None:
            if (total or done) < self.config.progress_from:
                return
            now = time.monotonic()
            if now - shown[0] >= 1.0:
                shown[0] = now
                of = f"/{total / 2**20:.0f}" if total else ""
                self.ctx.progress(f"{self.device_name}: {name} {done / 2**20:.0f}{of} MiB via {channel.name}")

        if direction == "put":
            channel.send(local, remote, progress)
        else:
            channel.receive(remote, local, progress)

    # --- checks ---------------------------------------------------------------------------------

    def _board_sha256(self, remote: str) -> str:
        result = self._shell().run(f"sha256sum {shlex.quote(remote)}", timeout=300)
        if not result.ok:
            raise TransferError(self.device_name, f"sha256sum {remote} on the board failed: {result.output}")
        return result.output.split()[0]

    def _board_tree(self, remote: str) -> dict[str, str]:
        q = shlex.quote(remote)
        result = self._shell().run(
            f'cd {q} && find . -type f | sort | while read -r f; do sha256sum "$f"; done', 600
        )
        if not result.ok:
            raise TransferError(
                self.device_name, f"checksums of {remote} on the board failed: {result.output}"
            )
        found = {}
        for line in result.output.splitlines():
            digest, _, path = line.partition("  ")
            found[path.removeprefix("./")] = digest
        return found

    def _compare_file(
        self, channel: str, local: Path, remote: str, local_sum: str, board_sum: str, direction: str = "put"
    ) -> None:
        if local_sum != board_sum:
            raise TransferError(
                self.device_name,
                f"{direction} of {local} {'to' if direction == 'put' else 'from'} {remote} over {channel}"
                f" arrived corrupted: sha256 here {local_sum}, on the board {board_sum}",
            )

    def _compare(
        self,
        channel: str,
        local: Path,
        remote: str,
        expected: dict[str, str],
        found: dict[str, str],
        direction: str = "put",
    ) -> None:
        for rel, digest in sorted(expected.items()):
            other = found.get(rel, "(missing)")
            if other != digest:
                here, board = (digest, other) if direction == "put" else (other, digest)
                raise TransferError(
                    self.device_name,
                    f"{direction} of folder {local} {'to' if direction == 'put' else 'from'} {remote} over"
                    f" {channel}: {rel} arrived corrupted: sha256 here {here}, on the board {board}",
                )


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _tree_digest(sums: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{d}  {p}\n" for p, d in sorted(sums.items())).encode()).hexdigest()


def _pack(source: Path, tar: Path) -> None:
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as archive:
        for rel in _tree(source):
            archive.add(source / rel, arcname=rel, recursive=False)
