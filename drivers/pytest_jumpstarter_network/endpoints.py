"""What a relay carries, apart from how: socket addresses, forwards, and the shared limits.

Kept apart from :mod:`.relay` (the event loop) and :mod:`.streams` / :mod:`.datagrams` (the
connections), which all use it.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import socket
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pytest_jumpstarter.network")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
#: Copy buffer shared by every connection (the loop is single threaded).
_BUFFER_SIZE = 1 << 20
#: TCP data read per chunk while impaired without segment shaping.
_IMPAIRED_CHUNK = 64 * 1024
#: A typical Ethernet TCP segment; loss and rate act per segment of this size.
_SEGMENT = 1448
#: Bytes one direction may hold in its delay queue before reading from its source pauses.
_DELAY_WINDOW = 1 << 20
#: A UDP client that sent nothing for this long loses its upstream socket.
_UDP_IDLE = 60.0
#: How many outcomes of accepted connections a forward remembers for :meth:`Relay.wait_outcome`.
_OUTCOMES_KEPT = 4096


@dataclass(frozen=True)
class Address:
    """A socket address with its family: ``Address(AF_INET, ("10.0.0.2", 80))`` or a Unix path."""

    family: int
    address: Any

    @classmethod
    def inet(cls, host: str, port: int) -> Address:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return cls(family, (host, port))

    @classmethod
    def unix(cls, path: str | os.PathLike[str]) -> Address:
        return cls(socket.AF_UNIX, os.fspath(path))

    def __str__(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"unix:{self.address}"
        host, port = self.address[:2]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"


class Forward:
    """One listening endpoint of a relay and where its traffic goes."""

    def __init__(self, kind: str, listen: Address, upstream: Address, label: str) -> None:
        #: ``"tcp"`` (stream, TCP or Unix listener) or ``"udp"``.
        self.kind = kind
        #: The bound address (the real port, if 0 was asked for).
        self.listen = listen
        self.upstream = upstream
        #: What the upstream is, for messages: ``board 'qemu_vm' (10.0.0.2) port 80``.
        self.label = label
        self.closed = False
        self._outcomes: collections.OrderedDict[Any, str | None] = collections.OrderedDict()
        self._cond = threading.Condition()

    def _record(self, client: Any, error: str | None) -> None:
        with self._cond:
            self._outcomes[client] = error
            while len(self._outcomes) > _OUTCOMES_KEPT:
                self._outcomes.popitem(last=False)
            self._cond.notify_all()

    def wait_outcome(self, client: Any, timeout: float) -> str | None:
        """Wait until the relay connected (``None``) or failed to connect (the reason) for ``client``.

        ``client`` is the local address of the test's socket (the relay's peer address).
        Raises :class:`TimeoutError` if neither happened in ``timeout`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: client in self._outcomes or self.closed, timeout):
                raise TimeoutError(client)
            if client not in self._outcomes:
                return "the forward was closed"
            return self._outcomes.pop(client)

    def __repr__(self) -> str:
        return f"<Forward {self.kind} {self.listen} -> {self.upstream} ({self.label})>"
