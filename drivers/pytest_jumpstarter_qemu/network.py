"""User-mode (slirp) networking of a QEMU board: its typed settings, and forwards read back over HMP.

Forwards are asked for with host port 0, so slirp picks a free one (no collisions under xdist);
``info usernet`` says which it picked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pytest_jumpstarter.errors import TunnelError
from pytest_jumpstarter.settings import SettingValueError, setting

_HOSTFWD = re.compile(r"\s*(TCP|UDP)\[HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)")


@dataclass(frozen=True, kw_only=True)
class UserNetwork:
    """``network:`` of a QEMU board: user-mode (slirp) networking, or none (``network: none``)."""

    mode: str = setting("user", choices=("user", "none"), doc="user (slirp) or none (no NIC)")
    forwards: Mapping[str, int] = setting(
        {}, doc="name -> guest TCP port; each gets a free host port on 127.0.0.1 at every launch"
    )
    tftp: bool = setting(False, doc="serve a per-run folder with slirp's TFTP server (tftp_root)")
    model: str | None = setting(None, doc="the NIC model (default: virtio-net on the architecture's bus)")
    address: str | None = setting(
        None, doc="an address the host can reach the guest at, for boards that have one (not slirp's)"
    )

    def __post_init__(self) -> None:
        for name, port in self.forwards.items():
            if not 0 < port < 65536:
                raise SettingValueError(f"expected a port 1-65535, found {port}", ("forwards", name))


def network_shorthand(value: object) -> object:
    """``network: none`` / ``user`` / nothing (user-mode networking with no options)."""
    if value in (None, "", "user"):
        return {}
    if value in ("none", False):
        return {"mode": "none"}
    return value


@dataclass(frozen=True)
class HostForward:
    """One ``HOST_FORWARD`` line of ``info usernet``."""

    proto: str  # "tcp" | "udp"
    host: str
    host_port: int
    guest_port: int


def parse_usernet(text: str) -> list[HostForward]:
    """Every ``HOST_FORWARD`` of an ``info usernet`` output."""
    found = []
    for line in text.splitlines():
        m = _HOSTFWD.match(line)
        if m:
            found.append(HostForward(m.group(1).lower(), m.group(2), int(m.group(3)), int(m.group(4))))
    return found


def match_forwards(wanted: Mapping[str, int], found: list[HostForward]) -> dict[str, int]:
    """name -> host port, pairing each wanted guest port with one TCP forward slirp made for it."""
    tcp = [f for f in found if f.proto == "tcp"]
    ports = {}
    for name, guest_port in wanted.items():
        for i, forward in enumerate(tcp):
            if forward.guest_port == guest_port:
                ports[name] = forward.host_port
                del tcp[i]
                break
    return ports


class UserNet:
    """The forwards of one board's user-mode network, over its HMP (``hmp(command) -> output``)."""

    def __init__(self, device: str, config: UserNetwork | None, hmp: Callable[[str], str]) -> None:
        self.device = device
        self.config = config
        self._hmp = hmp
        #: name -> host port of ``network.forwards``, as slirp picked them at the last launch.
        self.forwards: dict[str, int] = {}

    def read_forwards(self) -> None:
        """Learn the host ports slirp picked for the configured forwards (asked as port 0)."""
        self.forwards = {}
        if self.config is not None and self.config.forwards:
            self.forwards = match_forwards(self.config.forwards, self.host_forwards())

    def host_forwards(self) -> list[HostForward]:
        return parse_usernet(self._hmp("info usernet"))

    def forward(self, name: str) -> int:
        if name not in self.forwards:
            have = ", ".join(f"{k}={v}" for k, v in self.forwards.items()) or "none"
            raise TunnelError(self.device, f"no forward named {name!r} (forwards: {have}); is the board on?")
        return self.forwards[name]

    def add(self, guest_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> int:
        if self.config is None:
            raise TunnelError(self.device, "hostfwd_add needs user-mode networking; network is 'none'")
        before = {(f.proto, f.host, f.host_port) for f in self.host_forwards()}
        out = self._hmp(f"hostfwd_add net0 {proto}:{host}:0-:{guest_port}")
        if out.strip():
            raise TunnelError(
                self.device, f"could not forward {proto} {host}:0 to guest port {guest_port}: {out.strip()}"
            )
        for f in self.host_forwards():
            if (
                (f.proto, f.host, f.host_port) not in before
                and f.guest_port == guest_port
                and f.proto == proto
            ):
                return f.host_port
        raise TunnelError(
            self.device,
            f"forward to guest {proto} port {guest_port} not found in 'info usernet' after adding it",
        )

    def remove(self, host_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> None:
        out = self._hmp(f"hostfwd_remove net0 {proto}:{host}:{host_port}")
        if "removed" not in out:
            raise TunnelError(
                self.device,
                f"could not remove forward {proto} {host}:{host_port}: {out.strip() or 'no answer'}",
            )
