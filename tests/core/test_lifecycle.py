"""Provisioning: lazy, in dependency order, per scope, reset or cold boot, torn down whatever happens."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest
from core_support import events, write

CHAIN = """
name: chain
devices:
  board: {driver: rec, scope: {board_scope}, reset: {reset}, can_reset: {can_reset}}
  flasher: {driver: other, board: board}
  spare: {driver: rec, role: spare}
"""


def chain(
    pytester: pytest.Pytester, board_scope: str = "test", reset: str = "none", can_reset: str = "true"
) -> None:
    text = (
        CHAIN.replace("{board_scope}", board_scope)
        .replace("{reset}", reset)
        .replace("{can_reset}", can_reset)
    )
    write(pytester, "chain.yaml", text)


def test_devices_start_lazily_refs_first_and_stop_in_reverse(rec_pytester: pytest.Pytester) -> None:
    chain(rec_pytester)
    rec_pytester.makepyfile(
        """
        def test_no_device():
            pass

        def test_flash(other):
            assert other.ctx.refs["board"].started
        """
    )
    rec_pytester.runpytest("--target=chain.yaml").assert_outcomes(passed=2)
    assert events(rec_pytester) == [
        "start chain/board",
        "ready board for test_flash[chain]",
        "start chain/flasher",
        "ready flasher for test_flash[chain]",
        "teardown flasher after test_flash[chain]",
        "stop chain/flasher",
        "teardown board after test_flash[chain]",
        "stop chain/board",
    ]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("assert False, 'the test failed'", id="failure"),
        pytest.param("raise KeyboardInterrupt", id="keyboard-interrupt"),
    ],
)
def test_devices_are_stopped_after_a_failure_or_interrupt(rec_pytester: pytest.Pytester, body: str) -> None:
    chain(rec_pytester, board_scope="session")
    rec_pytester.makepyfile(f"def test_flash(other):\n    {body}\n")
    result = rec_pytester.runpytest("--target=chain.yaml", no_reraise_ctrlc=True)
    assert result.ret in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED)
    got = events(rec_pytester)
    assert got[-4:] == [
        "teardown flasher after test_flash[chain]",
        "stop chain/flasher",
        "teardown board after test_flash[chain]",
        "stop chain/board",
    ]


def test_start_failure_is_a_setup_error_with_the_driver_message(rec_pytester: pytest.Pytester) -> None:
    write(
        rec_pytester,
        "t.yaml",
        "name: t\ndevices:\n  board: {driver: rec}\n"
        "  flasher: {driver: other, board: board, fail_start: true}\n",
    )
    rec_pytester.makepyfile("def test_flash(other):\n    pass\n")
    result = rec_pytester.runpytest("--target=t.yaml")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*DriverError: device 'flasher': power supply says no (expected 12 V, found 0 V)",
            "(while starting device 'flasher' of target 't')",
        ]
    )
    assert "lifecycle.py" not in result.stdout.str()
    assert events(rec_pytester) == [
        "start t/board",
        "ready board for test_flash[t]",
        "start t/flasher",
        "stop t/flasher",
        "teardown board after test_flash[t]",
        "stop t/board",
    ]


def test_an_interrupted_start_still_stops_every_device(rec_pytester: pytest.Pytester) -> None:
    write(
        rec_pytester,
        "t.yaml",
        "name: t\ndevices:\n  board: {driver: rec, scope: session}\n"
        "  flasher: {driver: other, board: board, interrupt_start: true}\n",
    )
    rec_pytester.makepyfile("def test_flash(other):\n    pass\n")
    result = rec_pytester.runpytest("--target=t.yaml", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert events(rec_pytester) == [
        "start t/board",
        "ready board for test_flash[t]",
        "start t/flasher",
        "stop t/flasher",
        "teardown board after test_flash[t]",
        "stop t/board",
    ]


def _sigterm_after(pytester: pytest.Pytester, marker: bytes, *args: str, signum: int = signal.SIGTERM) -> int:
    """Run pytest in a process group, send ``signum`` once it printed ``marker``; return its exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", *args],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 60
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"the inner run never printed {marker!r}:\n{seen.decode()}"
            if select.select([proc.stdout], [], [], left)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"pytest exited early:\n{seen.decode()}"
                seen += chunk
        proc.send_signal(signum)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, (seen + rest).decode()
    return proc.returncode


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_tear_devices_down(rec_pytester: pytest.Pytester, signum: int) -> None:
    # SIGHUP: a closed terminal or a dropped ssh session must clean up like a CI cancel.
    chain(rec_pytester, board_scope="session")
    rec_pytester.makepyfile(
        """
        import threading

        def test_waits(other):
            print("READY", flush=True)
            threading.Event().wait(60)
        """
    )
    _sigterm_after(rec_pytester, b"READY", "--target=chain.yaml", signum=signum)
    assert events(rec_pytester)[-4:] == [
        "teardown flasher after test_waits[chain]",
        "stop chain/flasher",
        "teardown board after test_waits[chain]",
        "stop chain/board",
    ]


def test_sigterm_during_a_stop_still_finishes_the_stop(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "t.yaml", "name: t\ndevices:\n  rec: {driver: rec, slow_stop: true}\n")
    rec_pytester.makepyfile("def test_x(rec):\n    pass\n")
    _sigterm_after(rec_pytester, b"STOPPING", "--target=t.yaml")
    assert events(rec_pytester)[-2:] == ["teardown rec after test_x[t]", "stop t/rec"]


def test_session_scope_keeps_a_device_and_resets_it_between_tests(rec_pytester: pytest.Pytester) -> None:
    chain(rec_pytester, board_scope="session", reset="snapshot")
    rec_pytester.makepyfile(
        test_one="def test_a(rec):\n    pass\ndef test_b(rec):\n    pass\n",
        test_two="def test_c(rec):\n    pass\n",
    )
    rec_pytester.runpytest("--target=chain.yaml", "-p", "no:randomly").assert_outcomes(passed=3)
    assert events(rec_pytester) == [
        "start chain/board",
        "ready board for test_a[chain]",
        "reset board snapshot",
        "ready board for test_b[chain]",
        "reset board snapshot",
        "ready board for test_c[chain]",
        "teardown board after test_c[chain]",
        "stop chain/board",
    ]


def test_module_scope_keeps_a_device_within_a_module(rec_pytester: pytest.Pytester) -> None:
    chain(rec_pytester, board_scope="module")
    rec_pytester.makepyfile(
        test_one="def test_a(rec):\n    pass\ndef test_b(rec):\n    pass\n",
        test_two="def test_c(rec):\n    pass\n",
    )
    rec_pytester.runpytest("--target=chain.yaml").assert_outcomes(passed=3)
    starts = [e for e in events(rec_pytester) if e.startswith(("start", "stop"))]
    assert starts == ["start chain/board", "stop chain/board", "start chain/board", "stop chain/board"]


def test_test_scope_starts_a_device_per_test(rec_pytester: pytest.Pytester) -> None:
    chain(rec_pytester)
    rec_pytester.makepyfile("def test_a(rec):\n    pass\ndef test_b(rec):\n    pass\n")
    rec_pytester.runpytest("--target=chain.yaml").assert_outcomes(passed=2)
    assert [e for e in events(rec_pytester) if e.startswith(("start", "stop"))] == [
        "start chain/board",
        "stop chain/board",
        "start chain/board",
        "stop chain/board",
    ]


def test_a_referred_device_lives_as_long_as_the_device_referring_to_it(rec_pytester: pytest.Pytester) -> None:
    write(
        rec_pytester,
        "t.yaml",
        "name: t\ndevices:\n  board: {driver: rec, scope: test}\n"
        "  flasher: {driver: other, board: board, scope: session}\n",
    )
    rec_pytester.makepyfile("def test_a(other):\n    pass\ndef test_b(other):\n    pass\n")
    rec_pytester.runpytest("--target=t.yaml").assert_outcomes(passed=2)
    assert [e for e in events(rec_pytester) if e.startswith(("start", "stop"))] == [
        "start t/board",
        "start t/flasher",
        "stop t/flasher",
        "stop t/board",
    ]
    listing = rec_pytester.runpytest("--target=t.yaml", "--jumpstarter-list")
    listing.stdout.fnmatch_lines(["*board: driver rec, role rec, scope session (declared test, widened*"])


def test_reset_fallback_cold_boots_and_says_why_in_the_report(rec_pytester: pytest.Pytester) -> None:
    chain(rec_pytester, board_scope="session", reset="snapshot", can_reset="false")
    rec_pytester.makepyfile("def test_a(rec):\n    pass\ndef test_b(rec):\n    assert False\n")
    result = rec_pytester.runpytest("--target=chain.yaml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*Captured jumpstarter setup*", "board cold boot because the board has no snapshot support"]
    )
    assert events(rec_pytester) == [
        "start chain/board",
        "ready board for test_a[chain]",
        "reset board snapshot",
        "teardown board after test_b[chain]",
        "stop chain/board",
        "start chain/board",
        "ready board for test_b[chain]",
        "teardown board after test_b[chain]",
        "stop chain/board",
    ]


def test_switching_target_stops_the_previous_targets_devices(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "a.yaml", "name: a\ndevices:\n  rec: {driver: rec, scope: session}\n")
    write(rec_pytester, "b.yaml", "name: b\ndevices:\n  rec: {driver: rec, scope: session}\n")
    rec_pytester.makepyfile("def test_x(rec):\n    pass\ndef test_y(rec):\n    pass\n")
    rec_pytester.runpytest("--target=a.yaml", "--target=b.yaml").assert_outcomes(passed=4)
    assert [e for e in events(rec_pytester) if e.startswith(("start", "stop"))] == [
        "start a/rec",
        "stop a/rec",
        "start b/rec",
        "stop b/rec",
    ]


def test_each_device_gets_a_private_workdir_removed_after_stop(rec_pytester: pytest.Pytester) -> None:
    chain(rec_pytester)
    rec_pytester.makepyfile(
        """
        import pathlib
        seen = []

        def test_a(rec, other):
            assert rec.ctx.workdir != other.ctx.workdir
            assert (rec.ctx.workdir / "state").exists()
            seen.append(rec.ctx.workdir)

        def test_b():
            assert not seen[0].exists()
        """
    )
    rec_pytester.runpytest("--target=chain.yaml", "-p", "no:randomly").assert_outcomes(passed=2)


def test_console_transcript_is_a_report_section_and_a_log_file(rec_pytester: pytest.Pytester) -> None:
    write(
        rec_pytester, "t.yaml", "name: t\ndevices:\n  rec: {driver: rec, say: 'U-Boot 2023.01 says hello'}\n"
    )
    rec_pytester.makepyfile(
        """
        def test_boot(rec):
            rec.ctx.transcript.write("login: root\\n")
            assert False, "no shell"
        """
    )
    logdir = rec_pytester.path / "logs"
    result = rec_pytester.runpytest("--target=t.yaml", f"--jumpstarter-logdir={logdir}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*Captured console rec setup*",
            "U-Boot 2023.01 says hello",
            "*Captured console rec call*",
            "login: root",
        ]
    )
    log = logdir / "test_console_transcript_is_a_report_section_and_a_log_file.py_test_boot_t" / "rec.log"
    assert log.read_text() == "U-Boot 2023.01 says hello\nlogin: root\n"


def test_default_logdir_is_under_basetemp(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "t.yaml", "name: t\ndevices:\n  rec: {driver: rec, say: hello}\n")
    rec_pytester.makepyfile("def test_boot(rec):\n    pass\n")
    base = rec_pytester.path / "base"
    rec_pytester.runpytest("--target=t.yaml", f"--basetemp={base}").assert_outcomes(passed=1)
    logs = list((base / "jumpstarter-logs").rglob("rec.log"))
    assert [p.read_text() for p in logs] == ["hello\n"]


def test_target_fixture_gives_name_labels_and_started_devices(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "t.yaml", "name: t\nlabels: {arch: x86_64}\ndevices:\n  rec: {driver: rec}\n")
    rec_pytester.makepyfile(
        """
        def test_target(target):
            assert (target.name, dict(target.labels)) == ("t", {"arch": "x86_64"})
            assert list(target.devices) == ["rec"]
            assert target.device("rec").started
        """
    )
    rec_pytester.runpytest("--target=t.yaml").assert_outcomes(passed=1)
    assert events(rec_pytester)[0] == "start t/rec"


def test_each_xdist_worker_has_its_own_devices(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "t.yaml", "name: t\ndevices:\n  rec: {driver: rec, scope: session}\n")
    rec_pytester.makepyfile(
        "\n".join(f"def test_{i}(rec):\n    assert rec.ctx.extra['worker']\n" for i in range(4))
    )
    result = rec_pytester.runpytest_subprocess("--target=t.yaml", "-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=4)
    got = events(rec_pytester)
    assert sorted(got).count("start t/rec") == 2 and got.count("stop t/rec") == 2
