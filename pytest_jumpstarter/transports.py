"""Byte streams a :class:`~pytest_jumpstarter.console.Console` reads: a socket, or a pyserial port."""

from __future__ import annotations

import selectors
import socket
from typing import Any, Protocol


class Transport(Protocol):
    """A byte stream to a console.  ``write`` raises TimeoutError(what, seconds) if the other end stalls."""

    def read(self, size: int, timeout: float | None) -> bytes:
        """Up to ``size`` bytes, as soon as any arrive; ``b""`` if none came in ``timeout``.

        Raises :class:`EOFError` once the stream has ended.
        """
        ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SocketTransport:
    """A connected stream socket (a QEMU unix-socket or TCP chardev)."""

    def __init__(self, sock: socket.socket, write_timeout: float = 30.0) -> None:
        self.sock, self.write_timeout = sock, write_timeout  # how long a write waits for the other end
        sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._writable = selectors.DefaultSelector()
        self._writable.register(sock, selectors.EVENT_WRITE)

    def read(self, size: int, timeout: float | None) -> bytes:
        try:
            data = self.sock.recv(size)
        except BlockingIOError:
            if not self._selector.select(timeout):
                return b""
            try:
                data = self.sock.recv(size)
            except BlockingIOError:
                return b""
            except OSError as exc:  # e.g. ECONNRESET from a QEMU that was killed
                raise EOFError(str(exc)) from exc
        except OSError as exc:
            raise EOFError(str(exc)) from exc
        if not data:
            raise EOFError("the other end closed the connection")
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                if not self._writable.select(self.write_timeout):
                    what = f"the other end to take {len(view)} more bytes"
                    raise TimeoutError(what, self.write_timeout) from None
                continue
            except OSError as exc:
                raise EOFError(str(exc)) from exc
            view = view[sent:]

    def close(self) -> None:
        self._selector.close()
        self._writable.close()
        self.sock.close()


class SerialTransport:
    """A pyserial port: ``serial.serial_for_url("socket://...")``, ``loop://``, or a tty path."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def read(self, size: int, timeout: float | None) -> bytes:
        import serial

        try:
            self.port.timeout = timeout
            first: bytes = self.port.read(1)
            if not first:
                return b""
            # The rest of what is already there, without waiting: timeout 0 makes pyserial non-blocking.
            self.port.timeout = 0
            rest: bytes = self.port.read(max(0, size - 1))
        except (serial.SerialException, OSError) as exc:
            raise EOFError(str(exc)) from exc
        return first + rest

    def write(self, data: bytes) -> None:
        import serial

        try:
            self.port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise EOFError(str(exc)) from exc

    def close(self) -> None:
        self.port.close()
