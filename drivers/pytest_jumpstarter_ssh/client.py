"""The system OpenSSH client, driven for tests: one master connection, many sessions over it.

Why OpenSSH and not paramiko or asyncssh: measured on the demo board (see the README), its
multiplexed sessions answer ``true`` in ~24 ms against ~41 ms (asyncssh) and ~67 ms (paramiko), and
it copies 2-3x faster than either; it is also what a user types by hand, so a transfer is as fast as
``scp`` by construction.

Every ``ssh`` is a :mod:`pytest_jumpstarter.process` child (own session, parent-death signal, bounded
stop).  The master (``ssh -M -N``) is started from a thread of its own that lives as long as the
master should: the parent-death signal fires when the *thread* that spawned a child ends, and
``run()`` may be called from a test's worker thread.  Every
``run()`` is ``ssh -S <socket> host -- cmd``, a new session on the one authenticated connection, so
sessions run in parallel and cost no handshake.  Nothing here reads the user's ``~/.ssh``: ``-F
/dev/null``, a per-run ``known_hosts`` and per-run keys.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pytest_jumpstarter.console import RunResult
from pytest_jumpstarter.errors import SshError
from pytest_jumpstarter.process import Child, spawn
from pytest_jumpstarter.waiting import Deadline

_HINT = "(apt-get install openssh-client)"

#: OpenSSH's exit status for its own failures (the remote command's status otherwise).
SSH_FAILED = 255


@dataclass
class Endpoint:
    """Where and as whom to log in, and how the host is trusted."""

    device: str
    host: str
    port: int
    user: str
    #: The name the host key is pinned under (the board, not the address: forwarded ports change per boot).
    alias: str
    #: The board as messages name it.
    board: str = ""
    key: Path | None = None
    password: str | None = None
    #: ``accept-new`` (pin the first key seen), ``yes`` (only keys already in known_hosts), ``no``.
    strict: str = "accept-new"
    connect_timeout: float = 10.0
    options: Sequence[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"{self.user}@{self.address}"

    def where(self) -> str:
        """``board qemu_vm at root@127.0.0.1:40022``: the board and the address, for messages."""
        return f"board {self.board or self.device} at {self.describe()}"


class OpenSsh:
    """A master connection to one endpoint and the commands that use it."""

    def __init__(self, endpoint: Endpoint, workdir: Path, control_dir: Path) -> None:
        self.endpoint = endpoint
        self.workdir = workdir
        self.known_hosts = workdir / "known_hosts"
        # Unix socket paths are limited to ~108 bytes: the control socket lives in a short folder.
        self.control = control_dir / "cm"
        self._master: Child | None = None
        self._master_log = workdir / "ssh-master.log"
        self._askpass: Path | None = None
        #: The thread the master is spawned from, alive as long as this client (see the module doc).
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix=f"ssh-master-{endpoint.device}")

    # --- the master connection -----------------------------------------------------------------

    def options(self) -> list[str]:
        e = self.endpoint
        opts = [
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"StrictHostKeyChecking={e.strict}",
            "-o", f"HostKeyAlias={e.alias}",
            "-o", "CheckHostIP=no",
            "-o", "UpdateHostKeys=no",
            "-o", f"ControlPath={self.control}",
            "-o", f"ConnectTimeout={max(1, round(e.connect_timeout))}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "IdentityAgent=none",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-p", str(e.port),
            "-l", e.user,
        ]  # fmt: skip
        if e.key is not None:
            opts += ["-i", str(e.key)]
        if e.password is None:
            opts += ["-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey"]
        else:
            opts += ["-o", "PreferredAuthentications=publickey,password", "-o", "NumberOfPasswordPrompts=1"]
        for option in e.options:
            opts += ["-o", option]
        return opts

    def connect(self, deadline: Deadline) -> None:
        """Start the master and wait until it is authenticated (its control socket appears) or fails."""
        self._stop_master()
        self.control.unlink(missing_ok=True)
        env = dict(os.environ)
        if self.endpoint.password is not None:
            self._askpass = self.workdir / "askpass"
            self._askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$JUMPSTARTER_SSH_PASSWORD"\n')
            self._askpass.chmod(0o700)
            env.update(
                SSH_ASKPASS=str(self._askpass),
                SSH_ASKPASS_REQUIRE="force",
                JUMPSTARTER_SSH_PASSWORD=self.endpoint.password,
            )
        argv = ["ssh", *self.options(), "-M", "-N", "-o", "ControlPersist=no", self.endpoint.host]
        master = self._spawner.submit(
            spawn, argv, device=self.endpoint.device, stderr=self._master_log, env=env, hint=_HINT
        ).result()
        self._master = master
        while not self.control.exists():
            if not master.running:
                self._master = None
                master.close()
                raise self.error("could not log in", self._master_log.read_text(errors="replace"))
            if deadline.expired:
                self._stop_master()
                raise self.error(
                    f"timed out logging in after {deadline.seconds:g}s",
                    self._master_log.read_text(errors="replace"),
                )
            # The socket appears once the master is authenticated; its exit is the other outcome.
            master.wait(deadline.remaining(cap=0.01))

    def alive(self) -> bool:
        return self._master is not None and self._master.running and self.control.exists()

    def master_gone(self, within: float) -> bool:
        """Whether the master exits within ``within`` seconds (it does soon after its link drops)."""
        master = self._master
        return master is None or master.wait(within)

    def _stop_master(self) -> None:
        master, self._master = self._master, None
        if master is not None:
            master.close()
        self.control.unlink(missing_ok=True)

    def close(self) -> None:
        self._stop_master()
        self._spawner.shutdown(wait=True)

    def error(self, what: str, stderr: str) -> SshError:
        """An error naming the board and address, with what OpenSSH said, in words a test author reads."""
        e = self.endpoint
        said = stderr.strip()
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in said or "Host key verification failed" in said:
            hint = (
                f"the host key of {e.alias} is not the one pinned in {self.known_hosts}"
                " (the board's key changed, or another host answers at this address)"
            )
        elif "Permission denied" in said:
            how = f"key {e.key}" if e.key is not None else "no key"
            how += " or the password" if e.password is not None else ""
            hint = f"the board refused {how} for user {e.user!r}"
        elif "Connection refused" in said:
            hint = "nothing accepts connections there (is the SSH server running?)"
        elif "kex_exchange_identification" in said:
            # slirp (and any port-forward) accepts the connection, then finds nothing on the board.
            hint = "the connection was taken but no SSH server answered on the board (is it running?)"
        elif "closed by remote host" in said or "Connection reset" in said or "Broken pipe" in said:
            hint = "the connection dropped"
        else:
            hint = ""
        message = f"ssh to {e.where()}: {what}" + (f": {hint}" if hint else "")
        if said:
            message += "\nssh said:\n" + "\n".join("    " + line for line in said.splitlines()[-10:])
        return SshError(e.device, message)

    # --- sessions ------------------------------------------------------------------------------

    def command(self, remote: str, *extra: str) -> list[str]:
        """An ``ssh`` command line that runs ``remote`` in a new session over the master."""
        return ["ssh", *self.options(), "-o", "ControlMaster=no", *extra, self.endpoint.host, "--", remote]

    def run(self, command: str, timeout: float) -> RunResult:
        start = time.monotonic()
        deadline = Deadline(timeout, f"{command!r} over ssh")
        with self._stderr_file() as err:
            child = spawn(
                self.command(command), device=self.endpoint.device, stdout=subprocess.PIPE, stderr=err
            )
            try:
                out, _ = child.popen.communicate(timeout=deadline.remaining())
            except subprocess.TimeoutExpired as exc:
                child.stop(grace=1.0)
                raise SshError(
                    self.endpoint.device,
                    f"ssh to {self.endpoint.where()}: command {command!r} did not finish in {timeout:g}s"
                    + (f"\nits output so far:\n{_text(exc.stdout)}" if exc.stdout else ""),
                ) from None
            finally:
                child.close()
            stdout, stderr = _text(out), err.read_text(errors="replace")
        if child.returncode == SSH_FAILED and self.master_gone(within=2.0):
            raise self.error(f"lost the connection running {command!r}", stderr)
        return RunResult(
            command,
            stdout.replace("\r\n", "\n").rstrip("\n"),
            child.returncode if child.returncode is not None else SSH_FAILED,
            time.monotonic() - start,
            stderr=stderr.replace("\r\n", "\n").rstrip("\n"),
            channel=f"ssh {self.endpoint.describe()}",
        )

    @contextlib.contextmanager
    def _stderr_file(self) -> Iterator[Path]:
        """A file for one session's stderr (kept whole, unlike a child's bounded tail)."""
        fd, name = tempfile.mkstemp(prefix="stderr-", dir=self.control.parent)
        os.close(fd)
        try:
            yield Path(name)
        finally:
            Path(name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def stream(self, command: str, *, write: bool, timeout: float = 120.0) -> Iterator[IO[bytes]]:
        """A session whose stdin (``write``) or stdout carries a byte stream; checks its exit status.

        ``timeout`` bounds the wait for the session's end once the stream is done with.
        """
        with self._stderr_file() as err:
            child = spawn(
                self.command(command),
                device=self.endpoint.device,
                stdin=subprocess.PIPE if write else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if write else subprocess.PIPE,
                stderr=err,
            )
            pipe = child.stdin if write else child.stdout
            assert pipe is not None
            try:
                yield pipe
                pipe.close()
                if not child.wait(timeout):
                    raise SshError(
                        self.endpoint.device,
                        f"ssh to {self.endpoint.where()}: {command!r} did not end"
                        f" {timeout:g}s after its stream",
                    )
            finally:
                child.close()
            said = err.read_text(errors="replace")
        code = child.returncode
        if code != 0:
            if code == SSH_FAILED and self.master_gone(within=2.0):
                raise self.error(f"lost the connection during {command!r}", said)
            raise SshError(
                self.endpoint.device,
                f"ssh to {self.endpoint.where()}: {command!r} exited with status {code}: {said.strip()}",
            )

    def interactive(self, timeout: float = 30.0) -> Any:
        """A pexpect spawn of a login shell on a pty (``ssh -tt``) over the master."""
        import pexpect

        argv = self.command("exec /bin/sh -l", "-tt")
        # pexpect forks by itself (and makes its own session); setpriv gives it the parent-death
        # signal the process helper gives every other child.
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        return pexpect.spawn(argv[0], argv[1:], timeout=timeout, encoding="utf-8", codec_errors="replace")


class PortForward:
    """A local listener whose every connection is piped to a port on the board through the master.

    Each accepted connection gets its own ``ssh -W`` (stdio forwarding over the master), so there is
    no port to pick in advance and nothing to race for: the listener is bound to port 0 here.
    """

    def __init__(self, ssh: OpenSsh, remote_port: int, remote_host: str = "127.0.0.1") -> None:
        self.ssh = ssh
        self.target = f"{remote_host}:{remote_port}"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._children: list[Child] = []
        self._thread = threading.Thread(target=self._serve, name=f"ssh-forward-{self.port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            if not sel.select(0.2):
                continue
            try:
                conn, _ = self.listener.accept()
            except OSError:
                break
            # The child's stdin and stdout are the accepted socket itself: OpenSSH pipes it.  It is
            # spawned from this thread, which lives until close() stops the children.
            with conn:
                child = spawn(
                    self.ssh.command("true", "-W", self.target)[:-2],
                    device=self.ssh.endpoint.device,
                    stdin=conn.fileno(),
                    stdout=conn.fileno(),
                    stderr="devnull",
                )
            finished = [c for c in self._children if not c.running]
            for c in finished:
                c.close()
            self._children = [c for c in self._children if c.running] + [child]
        sel.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(2.0)
        for child in self._children:
            child.close()
        self._children.clear()


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def quote(path: str) -> str:
    return shlex.quote(path)
