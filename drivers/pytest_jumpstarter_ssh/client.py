"""The system OpenSSH client, driven for tests: one master connection, many sessions over it.

Why OpenSSH and not paramiko or asyncssh: measured on the demo board (see the README), its
multiplexed sessions answer ``true`` in ~24 ms against ~41 ms (asyncssh) and ~67 ms (paramiko), and
it copies 2-3x faster than either; it is also what a user types by hand, so a transfer is as fast as
``scp`` by construction.

The master (``ssh -M -N``) is a child of this process in its own session, killed on close; every
``run()`` is ``ssh -S <socket> host -- cmd``, a new session on the one authenticated connection, so
sessions run in parallel and cost no handshake.  Nothing here reads the user's ``~/.ssh``: ``-F
/dev/null``, a per-run ``known_hosts`` and per-run keys.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pytest_jumpstarter.console import RunResult
from pytest_jumpstarter.errors import SshError

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


class OpenSsh:
    """A master connection to one endpoint and the commands that use it."""

    def __init__(self, endpoint: Endpoint, workdir: Path, control_dir: Path) -> None:
        self.endpoint = endpoint
        self.workdir = workdir
        self.known_hosts = workdir / "known_hosts"
        # Unix socket paths are limited to ~108 bytes: the control socket lives in a short folder.
        self.control = control_dir / "cm"
        self._master: subprocess.Popen[bytes] | None = None
        self._master_log = workdir / "ssh-master.log"
        self._askpass: Path | None = None

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

    def connect(self, deadline: float) -> None:
        """Start the master and wait until it is authenticated (its control socket appears) or fails."""
        self.close()
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
        log = open(self._master_log, "wb")  # noqa: SIM115 - handed to the child
        try:
            self._master = subprocess.Popen(
                ["ssh", *self.options(), "-M", "-N", "-o", "ControlPersist=no", self.endpoint.host],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        while not self.control.exists():
            code = self._master.poll()
            if code is not None:
                self._master = None
                raise self.error("could not log in", self._master_log.read_text(errors="replace"))
            if time.monotonic() > deadline:
                self.close()
                raise self.error("timed out logging in", self._master_log.read_text(errors="replace"))
            # Waiting for the socket the master creates once authenticated (or for its exit).
            time.sleep(0.01)

    def alive(self) -> bool:
        return self._master is not None and self._master.poll() is None and self.control.exists()

    def close(self) -> None:
        master, self._master = self._master, None
        if master is not None and master.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master.pid, signal.SIGTERM)
            try:
                master.wait(2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(master.pid, signal.SIGKILL)
                master.wait(5.0)
        self.control.unlink(missing_ok=True)

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
        elif "closed by remote host" in said or "Connection reset" in said or "Broken pipe" in said:
            hint = "the connection dropped"
        else:
            hint = ""
        message = f"ssh {e.describe()}: {what}" + (f": {hint}" if hint else "")
        if said:
            message += "\nssh said:\n" + "\n".join("    " + line for line in said.splitlines()[-10:])
        return SshError(e.device, message)

    # --- sessions ------------------------------------------------------------------------------

    def command(self, remote: str, *extra: str) -> list[str]:
        """An ``ssh`` command line that runs ``remote`` in a new session over the master."""
        return ["ssh", *self.options(), "-o", "ControlMaster=no", *extra, self.endpoint.host, "--", remote]

    def run(self, command: str, timeout: float) -> RunResult:
        start = time.monotonic()
        try:
            done = subprocess.run(
                self.command(command),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise SshError(
                self.endpoint.device,
                f"ssh {self.endpoint.describe()}: command {command!r} did not finish in {timeout}s"
                + (f"\nits output so far:\n{_text(exc.stdout)}" if exc.stdout else ""),
            ) from None
        stdout, stderr = _text(done.stdout), _text(done.stderr)
        if done.returncode == SSH_FAILED and not self.alive():
            raise self.error(f"lost the connection running {command!r}", stderr)
        return RunResult(
            command,
            stdout.replace("\r\n", "\n").rstrip("\n"),
            done.returncode,
            time.monotonic() - start,
            stderr=stderr.replace("\r\n", "\n").rstrip("\n"),
            channel=f"ssh {self.endpoint.describe()}",
        )

    @contextlib.contextmanager
    def stream(self, command: str, *, write: bool) -> Iterator[IO[bytes]]:
        """A session whose stdin (``write``) or stdout carries a byte stream; checks its exit status."""
        proc = subprocess.Popen(
            self.command(command),
            stdin=subprocess.PIPE if write else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if write else subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        pipe = proc.stdin if write else proc.stdout
        assert pipe is not None and proc.stderr is not None
        stderr: list[bytes] = []
        reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read() if proc.stderr else b""))
        reader.start()
        try:
            yield pipe
            pipe.close()
            code = proc.wait(timeout=120)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            reader.join(10)
            proc.stderr.close()
        if code != 0:
            said = b"".join(stderr).decode(errors="replace")
            if code == SSH_FAILED and not self.alive():
                raise self.error(f"lost the connection during {command!r}", said)
            raise SshError(
                self.endpoint.device,
                f"ssh {self.endpoint.describe()}: {command!r} exited with status {code}: {said.strip()}",
            )

    def interactive(self, timeout: float = 30.0) -> Any:
        """A pexpect spawn of a login shell on a pty (``ssh -tt``) over the master."""
        import pexpect

        argv = self.command("exec /bin/sh -l", "-tt")
        # The remote command after "--" is a single word for pexpect's argv.
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
        self._children: list[subprocess.Popen[bytes]] = []
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
            # The child's stdin and stdout are the accepted socket itself: OpenSSH pipes it.
            child = subprocess.Popen(
                self.ssh.command("true", "-W", self.target)[:-2],
                stdin=conn.fileno(),
                stdout=conn.fileno(),
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            conn.close()
            self._children = [c for c in self._children if c.poll() is None] + [child]
        sel.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(2.0)
        for child in self._children:
            if child.poll() is None:
                child.kill()
            child.wait()


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def quote(path: str) -> str:
    return shlex.quote(path)
