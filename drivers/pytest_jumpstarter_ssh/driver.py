"""The ``ssh`` driver (role ``ssh``): a shell on a Linux board over SSH, for tests.

It names its board (``board: qemu_vm``) or an address.  For a board on user networking it uses the
board's forward named ``forward`` (``ssh`` by default), or adds one to guest port ``port`` (read back);
for a board with an address of its own it connects there.  Keys and ``known_hosts`` are per run, in
the device's folder: with no ``key:``, a fresh ed25519 key is made and (``authorize: true``)
installed into the board's ``authorized_keys`` over its console, again after every reboot.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pytest_jumpstarter.capabilities import Addressable, HasConsole, UserNetwork
from pytest_jumpstarter.console import RunResult
from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import DriverError, SshError, TunnelError
from pytest_jumpstarter.settings import Setting

from .client import Endpoint, OpenSsh, PortForward, quote

_POLICIES = {"accept-new": "accept-new", "ignore": "no"}


@dataclass(frozen=True)
class SshSettings:
    """The ``ssh`` settings, read in one place (to become the declared settings object of issue 9)."""

    board: str | None
    host: str | None
    port: int
    forward: str
    user: str
    password: str | None
    key: Path | None
    authorize: bool
    host_key: str
    connect_timeout: float
    ready_timeout: float
    command_timeout: float
    options: list[str]

    @classmethod
    def read(cls, settings: Mapping[str, Any], declared: Mapping[str, Setting]) -> SshSettings:
        def get(key: str) -> Any:
            return settings.get(key, declared[key].default)

        return cls(
            board=get("board"),
            host=get("host"),
            port=int(get("port")),
            forward=str(get("forward")),
            user=str(get("user")),
            password=get("password"),
            key=get("key"),
            authorize=bool(get("authorize")),
            host_key=str(get("host_key")),
            connect_timeout=float(get("connect_timeout")),
            ready_timeout=float(get("ready_timeout")),
            command_timeout=float(get("command_timeout")),
            options=list(get("options")),
        )


class SshShell(Driver):
    """``run``, parallel sessions, ``forward``, ``interactive`` and streams over one SSH connection."""

    name: ClassVar[str] = "ssh"
    role: ClassVar[str | None] = "ssh"
    settings: ClassVar[Mapping[str, Setting]] = {
        "board": Setting("ref", None, "the board this shell logs into (its forwards, console, address)"),
        "host": Setting("str", None, "address to connect to (default: the board's address, else 127.0.0.1)"),
        "port": Setting(
            "int", 22, "the SSH port on the board (on user networking: the guest port forwarded)"
        ),
        "forward": Setting("str", "ssh", "name of the board's forward to use for port, if it has one"),
        "user": Setting("str", "root", "login name"),
        "password": Setting("str", None, "password (put its variable in the target's secrets)"),
        "key": Setting("path", None, "private key file (default: a key made for this run)", must_exist=True),
        "authorize": Setting(
            "bool", True, "install the per-run key into the user's authorized_keys over the board's console"
        ),
        "host_key": Setting(
            "str",
            "accept-new",
            "accept-new (pin the first key seen this run), ignore, or the public key the board must"
            " have: a key line or a .pub file",
        ),
        "connect_timeout": Setting("duration", 10.0, "TCP connect and login timeout of one attempt"),
        "ready_timeout": Setting("duration", 30.0, "how long to wait for SSH after the board is ready"),
        "command_timeout": Setting("duration", 60.0, "default timeout of run()"),
        "options": Setting("list", [], "more ssh -o options, e.g. Ciphers=aes128-ctr"),
    }

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        if settings.get("board") is None and settings.get("host") is None:
            yield "host", "expected host: (an address) or board: (a device), found neither"
        host_key = str(settings.get("host_key", "accept-new"))
        if host_key not in _POLICIES and not host_key.startswith("ssh-") and not Path(host_key).suffix:
            yield "host_key", f"expected accept-new, ignore, a key line or a .pub file, found {host_key!r}"

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.config = SshSettings.read(ctx.settings, self.settings)
        board = ctx.refs.get("board") if self.config.board else None
        self.board: Driver | None = board
        self._client: OpenSsh | None = None
        self._control_dir: Path | None = None
        self._boots: int | None = None
        self._hostfwd: int | None = None
        self._forwards: list[PortForward] = []
        self.key: Path | None = self.config.key

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.ctx.workdir.mkdir(parents=True, exist_ok=True)
        self._control_dir = Path(tempfile.mkdtemp(prefix="js-ssh-"))
        if self.key is None:
            self.key = self.ctx.workdir / "id_ed25519"
            self.key.unlink(missing_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pytest-jumpstarter {self.ctx.target}",
                 "-f", str(self.key)],
                check=True,
                capture_output=True,
            )  # fmt: skip
        super().start()
        try:
            self._ensure()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for forward in self._forwards:
            forward.close()
        self._forwards.clear()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._hostfwd is not None and isinstance(self.board, UserNetwork):
            with contextlib.suppress(DriverError):
                self.board.hostfwd_remove(self._hostfwd)
        self._hostfwd = None
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None
        super().stop()

    def restore(self, mode: str) -> str | None:
        """Between tests: nothing to restore here; the connection is remade if the board rebooted."""
        return None

    reset = restore  # the lifecycle's name for it until issue 9 renames it

    # --- the shell ------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` this shell connects to (the forwarded port, for a board on user networking)."""
        return self._require().endpoint.address

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        """Run ``command`` in a new session: stdout, stderr and exit status (the console's RunResult)."""
        return self._require().run(command, self.config.command_timeout if timeout is None else timeout)

    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> int:
        """A port on 127.0.0.1 whose connections reach ``remote_host:remote_port`` as the board sees it."""
        forward = PortForward(self._require(), remote_port, remote_host)
        self._forwards.append(forward)
        return forward.port

    def interactive(self, timeout: float = 30.0) -> Any:
        """A pexpect-compatible channel: a login shell on a pty.  Close it when done."""
        return self._require().interactive(timeout)

    @contextlib.contextmanager
    def stream(self, command: str, *, write: bool) -> Iterator[Any]:
        """A session whose stdin (``write=True``) or stdout is a byte stream (how files travel)."""
        with self._require().stream(command, write=write) as pipe:
            yield pipe

    # --- connecting -----------------------------------------------------------------------------

    def _require(self) -> OpenSsh:
        self.require_started("ssh")
        return self._ensure()

    def _ensure(self) -> OpenSsh:
        """The connected client; reconnects after the board rebooted or the connection went away."""
        boots = self.board.boots if isinstance(self.board, UserNetwork) else None
        client = self._client
        if client is not None and client.alive() and boots == self._boots:
            return client
        if client is not None:
            client.close()
        endpoint = self._endpoint()
        assert self._control_dir is not None
        client = OpenSsh(endpoint, self.ctx.workdir, self._control_dir)
        self._pin_host_key(client)
        if self.config.authorize and self.config.key is None and isinstance(self.board, HasConsole):
            self._authorize()
        self._wait_for_ssh(client)
        self._client, self._boots = client, boots
        return client

    def _endpoint(self) -> Endpoint:
        c, board = self.config, self.board
        host, port = c.host, c.port
        if host is None and isinstance(board, Addressable) and board.guest_address:
            host = board.guest_address
        elif host is None and isinstance(board, UserNetwork):
            host = "127.0.0.1"
            try:
                port = board.forward(c.forward)
            except TunnelError:
                if self._hostfwd is None or self._boots != board.boots:
                    self._hostfwd = board.hostfwd_add(c.port)
                port = self._hostfwd
        if host is None:
            raise SshError(
                self.device_name, f"board {c.board!r} has no address and no user networking: set host:"
            )
        strict = _POLICIES.get(c.host_key, "yes")
        return Endpoint(
            device=self.device_name,
            host=host,
            port=port,
            user=c.user,
            alias=f"{self.ctx.target}/{c.board or self.device_name}",
            key=self.key,
            password=c.password,
            strict=strict,
            connect_timeout=c.connect_timeout,
            options=c.options,
        )

    def _pin_host_key(self, client: OpenSsh) -> None:
        """Write the per-run known_hosts: the given key (pinned from the first connection), else empty."""
        policy = self.config.host_key
        if policy in _POLICIES:
            client.known_hosts.touch()
            return
        line = Path(policy).read_text() if not policy.startswith("ssh-") else policy
        keytype, blob = line.split()[:2]
        client.known_hosts.write_text(f"{client.endpoint.alias} {keytype} {blob}\n")

    def _authorize(self) -> None:
        """Append this run's public key to the user's authorized_keys over the console (once per boot)."""
        assert isinstance(self.board, HasConsole) and self.key is not None
        public = self.key.with_name(self.key.name + ".pub").read_text().strip()
        home = "/root" if self.config.user == "root" else f"/home/{self.config.user}"
        keys = f"{home}/.ssh/authorized_keys"
        result = self.board.console.run(
            f"mkdir -p {home}/.ssh && chmod 700 {home}/.ssh && "
            f"{{ grep -qxF {quote(public)} {keys} 2>/dev/null || echo {quote(public)} >> {keys}; }}"
            f" && chmod 600 {keys}",
            timeout=10.0,
        )
        if not result.ok:
            raise SshError(self.device_name, f"could not install the run's key into {keys}: {result.output}")

    def _wait_for_ssh(self, client: OpenSsh) -> None:
        """Log in, retrying while the server is not up yet (refused or reset), up to ready_timeout."""
        deadline = time.monotonic() + self.config.ready_timeout
        while True:
            try:
                client.connect(min(deadline, time.monotonic() + self.config.connect_timeout))
                return
            except SshError as exc:
                # Only "not up yet" is worth waiting for: a refused key or a changed host key is final.
                said = str(exc)
                transient = any(
                    s in said
                    for s in ("Connection refused", "Connection reset", "closed by remote host", "timed out",
                              "Connection closed", "kex_exchange_identification")
                )  # fmt: skip
                if not transient or time.monotonic() >= deadline:
                    raise
            # SSH not up yet: the next attempt is the thing waited for; this only spaces attempts.
            time.sleep(0.2)
