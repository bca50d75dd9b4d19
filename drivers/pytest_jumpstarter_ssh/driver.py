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
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pytest_jumpstarter import process
from pytest_jumpstarter.capabilities import Addressable, HasConsole, Network, UserNetwork
from pytest_jumpstarter.console import RunResult
from pytest_jumpstarter.driver import DeviceContext, Driver, Referred
from pytest_jumpstarter.errors import DriverError, SshError, TunnelError
from pytest_jumpstarter.settings import setting
from pytest_jumpstarter.waiting import Deadline

from .client import Endpoint, OpenSsh, PortForward, quote

_POLICIES = {"accept-new": "accept-new", "ignore": "no"}
#: What a board must offer for this shell to find its port 22 (any one of them).
_REACHABLE = (Addressable, UserNetwork, Network)


@dataclass(frozen=True, kw_only=True)
class SshSettings:
    board: str | None = setting(
        None, kind="ref", doc="the board this shell logs into (its address, forwards or console)"
    )
    host: str | None = setting(
        None, doc="address to connect to (default: the board's address, else 127.0.0.1)"
    )
    port: int = setting(22, doc="the SSH port on the board (on user networking: the guest port forwarded)")
    forward: str = setting(
        "ssh", doc="name of the board's forward (user networking) or network (Jumpstarter) to port 22"
    )
    user: str = setting("root", doc="login name")
    password: str | None = setting(None, doc="password (put its variable in the target's secrets)")
    key: Path | None = setting(
        None, must_exist=True, doc="private key file (default: a key made for this run)"
    )
    authorize: bool = setting(
        True, doc="install the per-run key into the user's authorized_keys over the board's console"
    )
    host_key: str = setting(
        "accept-new",
        doc="accept-new (pin the first key seen this run), ignore, or the public key the board must"
        " have: a key line or a .pub file",
    )
    connect_timeout: float = setting(
        10.0, kind="duration", doc="TCP connect and login timeout of one attempt"
    )
    ready_timeout: float = setting(
        30.0, kind="duration", doc="how long to wait for SSH after the board is ready"
    )
    command_timeout: float = setting(60.0, kind="duration", doc="default timeout of run()")
    options: list[str] = setting([], doc="more ssh -o options, e.g. Ciphers=aes128-ctr")


class SshShell(Driver[SshSettings]):
    """``run``, parallel sessions, ``forward``, ``interactive`` and streams over one SSH connection."""

    name: ClassVar[str] = "ssh"
    role: ClassVar[str | None] = "ssh"

    @classmethod
    def check(cls, settings: SshSettings) -> Iterable[tuple[str, str]]:
        if settings.board is None and settings.host is None:
            yield "host", "expected host: (an address) or board: (a device), found neither"
        host_key = settings.host_key
        if host_key not in _POLICIES and not host_key.startswith("ssh-") and not Path(host_key).suffix:
            yield "host_key", f"expected accept-new, ignore, a key line or a .pub file, found {host_key!r}"

    @classmethod
    def check_refs(cls, settings: SshSettings, refs: Mapping[str, Referred]) -> Iterable[tuple[str, str]]:
        board = refs.get("board")
        if settings.host is None and board is not None and not set(_REACHABLE) & set(board.provides):
            yield (
                "board",
                f"ssh needs a way to the board's port {settings.port}: set host: or use a board that"
                " provides Addressable (guest_address), UserNetwork (forward) or Network (tcp);"
                f" {board.describe()} provides none of them",
            )

    @classmethod
    def provides(cls, settings: SshSettings) -> tuple[type, ...]:
        from .channels import SshSession  # what driver files needs of it

        return (*super().provides(settings), SshSession)

    def __init__(self, ctx: DeviceContext[SshSettings]) -> None:
        super().__init__(ctx)
        self.config = ctx.settings
        self._client: OpenSsh | None = None
        self._control_dir: Path | None = None
        self._boots: int | None = None
        self._hostfwd: int | None = None
        self._forwards: list[PortForward] = []
        self.key: Path | None = self.config.key

    @property
    def board_name(self) -> str:
        """The board as messages name it (the device this shell logs into, or the address)."""
        return self.config.board or self.config.host or self.device_name

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.ctx.workdir.mkdir(parents=True, exist_ok=True)
        self._control_dir = Path(tempfile.mkdtemp(prefix="js-ssh-"))
        if self.key is None:
            self.key = self.ctx.workdir / "id_ed25519"
            self.key.unlink(missing_ok=True)
            process.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pytest-jumpstarter {self.ctx.target}",
                 "-f", str(self.key)],
                device=self.device_name,
                timeout=30.0,
                hint="(apt-get install openssh-client)",
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
        user_net = self.ctx.provided("board", UserNetwork)
        if self._hostfwd is not None and user_net is not None:
            with contextlib.suppress(DriverError):
                user_net.hostfwd_remove(self._hostfwd)
        self._hostfwd = None
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None
        super().stop()

    def restore(self, mode: str) -> str | None:
        """Between tests: nothing to restore here; the connection is remade if the board rebooted."""
        return None

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
        user_net = self.ctx.provided("board", UserNetwork)
        boots = user_net.boots if user_net is not None else None
        client = self._client
        if client is not None and client.alive() and boots == self._boots:
            return client
        if client is not None:
            client.close()
        endpoint = self._endpoint()
        assert self._control_dir is not None
        client = OpenSsh(endpoint, self.ctx.workdir, self._control_dir)
        self._pin_host_key(client)
        console_board = self.ctx.provided("board", HasConsole)
        if self.config.authorize and self.config.key is None and console_board is not None:
            self._authorize(console_board)
        self._wait_for_ssh(client)
        self._client, self._boots = client, boots
        return client

    def _endpoint(self) -> Endpoint:
        c = self.config
        host, port = c.host, c.port
        addressable = self.ctx.provided("board", Addressable)
        user_net = self.ctx.provided("board", UserNetwork)
        network = self.ctx.provided("board", Network)
        if host is None and addressable is not None and addressable.guest_address:
            host = addressable.guest_address
        elif host is None and user_net is not None:
            host = "127.0.0.1"
            try:
                port = user_net.forward(c.forward)
            except TunnelError:
                if self._hostfwd is None or self._boots != user_net.boots:
                    self._hostfwd = user_net.hostfwd_add(c.port)
                port = self._hostfwd
        elif host is None and network is not None:
            # A board of a remote lab: its port-forward of the network named forward: (a local port).
            host, port = network.tcp(c.forward)
        if host is None:
            raise SshError(
                self.device_name,
                f"board {c.board!r} has no address, no user networking and no network forward: set host:",
            )
        strict = _POLICIES.get(c.host_key, "yes")
        return Endpoint(
            device=self.device_name,
            host=host,
            port=port,
            user=c.user,
            alias=f"{self.ctx.target}/{c.board or self.device_name}",
            board=self.board_name,
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

    def _authorize(self, board: HasConsole) -> None:
        """Append this run's public key to the user's authorized_keys over the console (once per boot)."""
        assert self.key is not None
        public = self.key.with_name(self.key.name + ".pub").read_text().strip()
        home = "/root" if self.config.user == "root" else f"/home/{self.config.user}"
        keys = f"{home}/.ssh/authorized_keys"
        result = board.console.run(
            f"mkdir -p {home}/.ssh && chmod 700 {home}/.ssh && "
            f"{{ grep -qxF {quote(public)} {keys} 2>/dev/null || echo {quote(public)} >> {keys}; }}"
            f" && chmod 600 {keys}",
            timeout=10.0,
        )
        if not result.ok:
            raise SshError(self.device_name, f"could not install the run's key into {keys}: {result.output}")

    def _wait_for_ssh(self, client: OpenSsh) -> None:
        """Log in, retrying while the server is not up yet (refused or reset), up to ready_timeout.

        A refused key or a changed host key is final at once; "not up yet" past the deadline is
        reported with what the last attempt found.
        """
        ready = self.config.ready_timeout
        deadline = Deadline(ready, f"SSH on {client.endpoint.where()}")
        while True:
            try:
                # Each attempt gets at least a second: a login cut at 0 s says nothing about the board.
                client.connect(
                    Deadline(max(1.0, deadline.remaining(cap=self.config.connect_timeout)), "login")
                )
                return
            except SshError as exc:
                if not _transient(str(exc)):
                    raise
                if deadline.expired:
                    where = client.endpoint.where()
                    last = exc.message.removeprefix(f"ssh to {where}: ")
                    raise SshError(
                        self.device_name,
                        f"no SSH login to {where} within {ready:g}s (ready_timeout); last attempt: {last}",
                    ) from exc
            # SSH not up yet: the next attempt is the thing waited for; this only spaces attempts.
            time.sleep(deadline.remaining(cap=0.2))


def _transient(said: str) -> bool:
    """Whether a failed login means "not up yet" (worth another attempt)."""
    return any(
        s in said
        for s in ("Connection refused", "Connection reset", "closed by remote host", "timed out",
                  "Connection closed", "kex_exchange_identification")
    )  # fmt: skip
