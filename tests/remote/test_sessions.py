"""Sessions to exporters share the run's one event loop: no thread per session, and one closing leaves
the others working."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("jumpstarter_cli", reason="needs the [jumpstarter] extra")

from exporter_support import free_port, private_dir, running_exporter
from pytest_jumpstarter_remote import session as session_module
from pytest_jumpstarter_remote.session import Session, StreamTransport, shared_portal

from pytest_jumpstarter.aioloop import EventLoopThread

EXPORT = {
    "power": {"type": "jumpstarter_driver_power.driver.MockPower"},
    "serial": {"type": "jumpstarter_driver_pyserial.driver.PySerial", "config": {"url": "loop://"}},
}


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    folder = private_dir("pytest-jumpstarter-sessions-")
    try:
        with running_exporter("sessions", EXPORT, folder, listen=f"127.0.0.1:{free_port()}") as exporter:
            assert exporter.listen is not None
            yield exporter.listen
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def connected(address: str) -> Session:
    session = Session("board")
    session.connect_tcp(address, insecure=True, tls_ca=None, passphrase=None, timeout=10.0)
    return session


def test_sessions_share_one_loop_and_start_no_thread_of_their_own(address):
    first = connected(address)
    threads = threading.active_count()
    others = [connected(address) for _ in range(4)]
    try:
        assert threading.active_count() == threads
        assert all(s.portal is first.portal for s in others)
    finally:
        for session in [first, *others]:
            session.close()


def test_a_closed_session_leaves_the_others_streams_and_calls_working(address):
    keeps, leaves = connected(address), connected(address)
    try:
        console = StreamTransport(keeps, keeps.client("serial", "console"))
        leaves.client("power", "power").on()
        leaves.close()
        keeps.client("power", "power").on()
        console.write(b"still here")  # loop:// echoes what it is sent
        got = b""
        while len(got) < len(b"still here"):
            got += console.read(100, timeout=10.0)
        assert got == b"still here"
        console.close()
    finally:
        keeps.close()


def test_a_replaced_loop_gets_a_portal_of_its_own(monkeypatch):
    loop_thread = EventLoopThread("sessions-test")
    monkeypatch.setattr(session_module, "SHARED", loop_thread)
    monkeypatch.setattr(session_module, "_portal", None)
    try:
        before = shared_portal()
        assert shared_portal() is before and before.call(lambda: 42) == 42
        loop_thread.stop()
        after = shared_portal()
        assert after is not before and after.call(lambda: 43) == 43
    finally:
        loop_thread.stop()


def test_a_portal_of_an_anyio_imported_before_is_not_reused(monkeypatch):
    """pytester's in-process runs unload what a run imported: the next run's client models take only
    a portal of the anyio classes imported now."""
    from anyio.from_thread import BlockingPortal

    from pytest_jumpstarter.aioloop import SHARED

    class OldBlockingPortal:  # what a portal of a former anyio import looks like to the current one
        pass

    monkeypatch.setattr(session_module, "_portal", (SHARED.loop, OldBlockingPortal()))
    portal = shared_portal()
    assert type(portal) is BlockingPortal and portal.call(lambda: 44) == 44
