"""Leases from a controller (the stand-in in controller.py) with the stock exporter, over real gRPC and TLS."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jumpstarter_cli", reason="needs the [jumpstarter] extra")

from controller import MOCK_EXPORT, Controller, running_lab
from exporter_support import Exporter, exporter_config, free_port, give_to_exporter_user, private_dir

EXPORT = MOCK_EXPORT


@pytest.fixture
def lab() -> Iterator[tuple[Controller, Exporter, Path]]:
    with running_lab() as (ctl, exporter, folder):
        yield ctl, exporter, folder
    assert not exporter.leftovers()


def target(pytester: pytest.Pytester, ctl: Controller, selector: str = "{board: mock}", **extra: str) -> None:
    client = ctl.client_config(pytester.path / "client.yaml", "alice")
    lines = [
        "name: lab",
        "devices:",
        "  board:",
        "    driver: jumpstarter",
        "    scope: module",
        f"    client: {client}",
        f"    selector: {selector}",
        "    power: power",
        "    console: serial",
        "    ready: ''",
    ]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    pytester.makefile(".yaml", lab="\n".join(lines) + "\n")


def test_a_lease_is_granted_used_and_released(pytester, lab):
    ctl, _, _ = lab
    target(pytester, ctl)
    pytester.makepyfile("""
        def test_echo(target):
            board = target.device("board")
            board.console.sendline("hello lab")
            board.console.expect("hello lab")
    """)
    result = pytester.runpytest("--target=lab.yaml", "-p", "no:cacheprovider", "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    assert [e.split()[0] for e in ctl.log if e.startswith(("granted", "ended"))] == ["granted", "ended"]
    assert ctl.log[-1].endswith("Released")
    # The test's JUnit properties name the lease, the exporter it was on and the controller.
    (case,) = ET.parse(pytester.path / "out.xml").iter("testcase")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    (granted,) = [e.split()[1] for e in ctl.log if e.startswith("granted")]
    assert props["jumpstarter_board_lease"] == granted, props
    assert props["jumpstarter_board_exporter"] == "bench-1", props
    assert props["jumpstarter_board_controller"] == ctl.address, props
    assert props["jumpstarter_board_selector"] == "board=mock", props


def test_listing_names_the_matching_exporters_and_takes_no_lease(pytester, lab):
    ctl, _, _ = lab
    target(pytester, ctl)
    pytester.makepyfile("def test_x(target):\n    pass\n")
    result = pytester.runpytest("--target=lab.yaml", "--jumpstarter-list", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            f"*lease: none taken by a listing (selector board=mock, controller {ctl.address})",
            "*exporters matching (1 of 1):",
            "*  bench-1 {'board': 'mock'} online",
            "*driver tree: served only under a lease, not read",
        ]
    )
    assert not [e for e in ctl.log if e.startswith("granted")], ctl.log


def test_a_selector_nothing_matches_fails_at_once(pytester, lab):
    ctl, _, _ = lab
    target(pytester, ctl, selector="{board: rpi4}")
    pytester.makepyfile("def test_x(target):\n    target.device('board')\n")
    result = pytester.runpytest("--target=lab.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*no exporter at 127.0.0.1:* matches selector 'board=rpi4'*bench-1*board*mock*"]
    )


def test_a_busy_board_says_who_holds_it_and_times_out_naming_the_selector(pytester, lab):
    ctl, _, _ = lab
    import datetime

    from jumpstarter.config.client import ClientConfigV1Alpha1

    bob = ClientConfigV1Alpha1.from_file(ctl.client_config(pytester.path / "bob.yaml", "bob"))
    held = bob.create_lease(duration=datetime.timedelta(minutes=5), selector="board=mock")
    target(pytester, ctl, acquisition_timeout="2s")
    pytester.makepyfile("def test_x(target):\n    target.device('board')\n")
    result = pytester.runpytest("--target=lab.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*waiting for lease * (selector board=mock): exporter bench-1 is held by lease {held.name} of client bob*",
        ]
    )
    result.stdout.fnmatch_lines(["*no lease for selector 'board=mock' within 2s*the lab offers: bench-1*"])


def test_the_lease_is_renewed_while_the_device_lives(pytester, lab):
    ctl, _, _ = lab
    target(pytester, ctl, duration="2s")
    pytester.makepyfile("""
        import time
        def test_outlives_the_duration(target):
            board = target.device("board")
            time.sleep(4)  # twice the lease's duration: only renewals keep it
            board.console.sendline("still here")
            board.console.expect("still here")
    """)
    pytester.runpytest("--target=lab.yaml", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert any(c.endswith(":UpdateLease") for c in ctl.calls)
    assert ctl.log[-1].endswith("Released")


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_lease_that_ends_mid_test_fails_the_current_wait_at_once(pytester, lab, how):
    ctl, _, _ = lab
    target(pytester, ctl, duration="3s" if how == "expired" else "10m")
    flag = pytester.path / "waiting"
    pytester.makepyfile(f"""
        def test_waits(target):
            board = target.device("board")
            open({str(flag)!r}, "w").close()
            board.console.expect("never printed", timeout=120)
    """)
    if how == "expired":
        # A controller that refuses renewals: the lease runs out.
        ctl.run(lambda: setattr(ctl, "leases", _NoRenewal(ctl.leases)))

    def revoke() -> None:
        while not flag.exists():
            time.sleep(0.05)  # until the inner test is waiting on the console
        name = next(iter(ctl.leases))
        if how == "revoked":
            ctl.revoke(name)

    thread = threading.Thread(target=revoke)
    thread.start()
    began = time.monotonic()
    result = pytester.runpytest("--target=lab.yaml", "-p", "no:cacheprovider")
    thread.join()
    result.assert_outcomes(failed=1)
    reason = "Revoked" if how == "revoked" else "Expired"
    result.stdout.fnmatch_lines(
        [f"*LeaseLost: device 'board': lease * on exporter bench-1 ended at *({reason}*"]
    )
    assert time.monotonic() - began < 60


class _NoRenewal(dict):  # type: ignore[type-arg]
    """The lease table of a controller that ignores UpdateLease (its duration stays)."""

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        lease = super().__getitem__(key)
        object.__setattr__(lease, "__class__", _FixedDuration)
        return lease


from controller import LeaseRec  # noqa: E402


class _FixedDuration(LeaseRec):
    def __setattr__(self, name, value):  # type: ignore[no-untyped-def]
        if name != "duration" or not hasattr(self, "duration"):
            super().__setattr__(name, value)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_releases_the_lease(pytester, lab, signum):
    ctl, _, _ = lab
    target(pytester, ctl)
    pytester.makepyfile("""
        import time
        def test_long(target):
            target.device("board")
            print("HOLDING", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--target=lab.yaml", "-p", "no:cacheprovider", "-s"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if b"HOLDING" in line:
                break
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ctl.log[-1].endswith("Released"), ctl.log


def test_an_unreachable_controller_fails_within_seconds_naming_the_address(pytester, lab):
    ctl, _, _ = lab
    target(pytester, ctl)
    port = free_port()
    text = (pytester.path / "client.yaml").read_text().replace(ctl.address, f"127.0.0.1:{port}")
    (pytester.path / "client.yaml").write_text(text)
    pytester.makepyfile("def test_x(target):\n    target.device('board')\n")
    began = time.monotonic()
    result = pytester.runpytest("--target=lab.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*cannot reach the controller at 127.0.0.1:{port}:*"])
    assert time.monotonic() - began < 30


def test_a_controller_that_goes_away_mid_test_is_reported_within_seconds(pytester, lab):
    ctl, _, _ = lab
    target(pytester, ctl)
    flag = pytester.path / "waiting"
    pytester.makepyfile(f"""
        def test_waits(target):
            board = target.device("board")
            open({str(flag)!r}, "w").close()
            board.console.expect("never printed", timeout=120)
    """)

    def vanish() -> None:
        while not flag.exists():
            time.sleep(0.05)  # until the inner test is waiting on the console
        ctl.stop()

    thread = threading.Thread(target=vanish)
    thread.start()
    began = time.monotonic()
    result = pytester.runpytest("--target=lab.yaml", "-p", "no:cacheprovider")
    thread.join()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*ControllerLost: device 'board': the controller at {ctl.address} went away during lease * on exporter bench-1*"
        ]
    )
    assert time.monotonic() - began < 60


@pytest.fixture
def two_benches() -> Iterator[Controller]:
    """A controller with two exporters of the same labels."""
    folder = private_dir("pytest-jumpstarter-lab-")
    ctl = Controller(folder).start()
    exporters = []
    try:
        for name in ("bench-1", "bench-2"):
            workdir = folder / name
            workdir.mkdir()
            give_to_exporter_user(workdir)
            config = exporter_config(name, EXPORT, **ctl.exporter_endpoint(name, {"board": "mock"}))
            exporters.append(Exporter(config, workdir).start())
        deadline = time.monotonic() + 30
        while not all(e.online for e in ctl.exporters.values()) and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the exporters' Register
        yield ctl
    finally:
        for exporter in exporters:
            exporter.stop()
        ctl.stop()
        assert not [pid for e in exporters for pid in e.leftovers()]
        shutil.rmtree(folder, ignore_errors=True)


def test_one_lease_per_device_per_xdist_worker(pytester, two_benches):
    pytest.importorskip("xdist")
    ctl = two_benches
    target(pytester, ctl)
    (pytester.path / "lab.yaml").write_text(
        (pytester.path / "lab.yaml").read_text().replace("module", "session")
    )
    test = """
        import os
        def test_{n}_a(target):
            board = target.device("board")
            board.console.sendline("a")
            board.console.expect("a")
        def test_{n}_b(target):
            target.device("board")
    """
    pytester.makepyfile(test_one=test.format(n="one"), test_two=test.format(n="two"))
    result = pytester.runpytest_subprocess(
        "--target=lab.yaml", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile"
    )
    result.assert_outcomes(passed=4)
    granted = [e for e in ctl.log if e.startswith("granted")]
    assert len(granted) == 2, ctl.log  # four tests, two workers: one lease each, held for the session
    assert len({e.split()[-1] for e in granted}) == 2, ctl.log  # on the two exporters
    assert sum(e.startswith("ended") for e in ctl.log) == 2, ctl.log
