"""Port-forwards from 127.0.0.1 to the exporter's network drivers (TcpNetwork and friends).

Each forward is a listener on 127.0.0.1 port 0 in the session's event loop; the port the kernel
picked is read back from the listener.  Every accepted connection opens the network driver's
``connect`` stream and the two are spliced.  When the lease ends the listeners and every spliced
connection are closed at once, so a test reading from one sees the end instead of silence.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any

from pytest_jumpstarter.errors import DriverError, TunnelError

if TYPE_CHECKING:
    from .driver import JumpstarterBoard


class Forwards:
    def __init__(self, board: JumpstarterBoard) -> None:
        self.board = board
        self._ports: dict[str, tuple[str, int]] = {}
        self._scopes: list[Any] = []
        self._cms: list[Any] = []

    def _path(self, port: int | str) -> tuple[str, str]:
        network = self.board.config.network
        key = str(port)
        if key not in network:
            known = ", ".join(f"{n} -> {p}" for n, p in network.items()) or "none"
            raise TunnelError(
                self.board.device_name,
                f"port {key} is not one of this board's networks (network: {known}); a Jumpstarter "
                "exporter forwards only the network drivers it serves",
            )
        return key, str(network[key])

    def tcp(self, port: int | str) -> tuple[str, int]:
        name, path = self._path(port)
        if name not in self._ports:
            self._ports[name] = self._listen(path)
        return self._ports[name]

    def connect(self, port: int | str, timeout: float) -> socket.socket:
        host, local = self.tcp(port)
        try:
            sock = socket.create_connection((host, local), timeout=timeout)
        except OSError as exc:
            raise TunnelError(
                self.board.device_name, f"cannot connect to port {port} through {host}:{local}: {exc}"
            ) from exc
        return sock

    def _listen(self, path: str) -> tuple[str, int]:
        session = self.board.session
        client = session.client(path, f"network {path}")
        cm = session.portal.wrap_async_context_manager(_forward(client))
        try:
            address, scope = cm.__enter__()
        except Exception as exc:
            raise TunnelError(self.board.device_name, f"cannot forward to {path}: {exc}") from exc
        self._cms.append(cm)
        self._scopes.append(scope)
        return str(address[0]), int(address[1])

    def fail(self, exc: DriverError) -> None:
        """Close every listener and connection now (called from a watcher thread)."""
        session = self.board._session
        for scope in self._scopes:
            if session is not None:
                with contextlib.suppress(Exception):
                    session.portal.call(scope.cancel)

    def close(self) -> None:
        cms, self._cms = self._cms, []
        self._scopes = []
        self._ports.clear()
        for cm in reversed(cms):
            with contextlib.suppress(Exception):
                cm.__exit__(None, None, None)


@contextlib.asynccontextmanager
async def _forward(client: Any) -> Any:
    """Listen on 127.0.0.1:0 and splice each connection into ``client``'s connect stream."""
    import anyio
    from anyio.abc import SocketAttribute
    from jumpstarter.streams.common import forward_stream

    async def handle(conn: Any) -> None:
        async with conn:
            try:
                async with client.stream_async("connect") as stream, forward_stream(conn, stream):
                    pass
            except Exception:
                # The board refused or the exporter dropped the stream: the local side just closes.
                return

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle, tg)
        try:
            yield listener.extra(SocketAttribute.local_address), tg.cancel_scope
        finally:
            tg.cancel_scope.cancel()
