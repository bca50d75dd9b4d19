"""What a failed device test leaves in its CI artifacts: JUnit XML, pytest-html, Allure; reruns,
markers, options, progress and xdist groups."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from core_support import events, write

#: A driver with a real Console over a socketpair (the far end says one line and then nothing),
#: a display that writes a real PNG, and report properties.
SCREEN_CONFTEST = """
import socket, struct, zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_jumpstarter import Console, Driver, SocketTransport, device_fixture


def png(width, height, rgb):
    raw = b"".join(b"\\x00" + bytes(rgb) * width for _ in range(height))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@dataclass(frozen=True, kw_only=True)
class TalkerSettings:
    banner: str = "Welcome to the talker board"
    events: Path = Path("events.log")


class Talker(Driver[TalkerSettings]):
    name = "talker"
    role = "talker"
    restore_modes = ("snapshot",)
    has_display = True

    def note(self, text):
        with open(self.ctx.settings.events, "a") as f:
            f.write(text + "\\n")

    def start(self):
        self.note(f"start {self.ctx.name}")
        self._near, self._far = socket.socketpair()
        self.console = Console(SocketTransport(self._near), device=self.ctx.name,
                               logfile_read=self.ctx.transcript, timeout=60)
        self._far.sendall(self.ctx.settings.banner.encode() + b"\\r\\n")
        self.console.expect("talker board")
        self.started = True

    def stop(self):
        if self.started:
            self.note(f"stop {self.ctx.name}")
            self.console.close()
            self._far.close()
        self.started = False

    def restore(self, mode):
        self.note(f"restore {self.ctx.name} {mode}")
        return None

    def say(self, text):
        self._far.sendall(text.encode() + b"\\r\\n")

    def screenshot(self, path=None):
        path = path or self.ctx.workdir / "screen.png"
        path.write_bytes(png(64, 48, (200, 30, 30)))
        return path

    def report_properties(self):
        return {"flash": "firmware.img crc32:1234abcd -> disk"}


@pytest.hookimpl
def pytest_jumpstarter_add_drivers():
    return [Talker]


talker = device_fixture("talker")
"""

TARGET = "name: bench\nsecrets: [BENCH_TOKEN]\ndevices:\n  talker: {driver: talker, scope: {scope}, reset: {reset}}\n"


@pytest.fixture
def screen(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(SCREEN_CONFTEST)
    monkeypatch.setenv("BENCH_TOKEN", "hunter2-secret")
    bench(pytester)
    return pytester


def bench(pytester: pytest.Pytester, scope: str = "test", reset: str = "none") -> None:
    write(pytester, "bench.yaml", TARGET.replace("{scope}", scope).replace("{reset}", reset))


FAILING = """
def test_boot(talker):
    talker.say("login: root")
    talker.say("token is hunter2-secret")
    talker.console.expect("token is")
    assert False, "no shell"
"""


def test_junit_holds_the_console_tail_and_the_properties(screen: pytest.Pytester) -> None:
    screen.makepyfile(FAILING)
    logs = screen.path / "logs"
    result = screen.runpytest("--target=bench.yaml", "--junitxml=out.xml", f"--jumpstarter-logdir={logs}")
    result.assert_outcomes(failed=1)
    text = (screen.path / "out.xml").read_text()
    assert "hunter2-secret" not in text
    root = ET.fromstring(text)
    case = root.find(".//testcase")
    assert case is not None
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["jumpstarter_target"] == "bench"
    assert props["jumpstarter_target_file"].endswith("bench.yaml")
    assert props["jumpstarter_device_talker"] == "talker"
    assert props["jumpstarter_talker_flash"] == "firmware.img crc32:1234abcd -> disk"
    assert Path(props["jumpstarter_log_talker"]).read_text().startswith("Welcome to the talker board")
    assert Path(props["jumpstarter_screenshot_talker"]).read_bytes().startswith(b"\x89PNG")
    out = "".join(node.text or "" for node in case.iter("system-out"))
    assert "Welcome to the talker board" in out
    assert "login: root" in out
    assert "token is ***" in out
    assert f"[[ATTACHMENT|{props['jumpstarter_log_talker']}]]" in out
    suite = {p.get("name"): p.get("value") for p in root.find("testsuite").find("properties")}  # type: ignore[union-attr]
    assert suite["jumpstarter_version"]
    assert suite["jumpstarter_target_file_bench"] == "bench.yaml"


def test_junit_bounds_a_long_transcript_keeping_its_beginning_and_end(screen: pytest.Pytester) -> None:
    screen.makepyfile(
        """
        def test_chatty(talker):
            for i in range(3000):
                talker.say(f"line {i:05d} " + "x" * 40)
                if i % 100 == 99:  # read as it comes: the socket buffer is finite
                    talker.console.expect(f"line {i:05d}")
            assert False
        """
    )
    screen.runpytest("--target=bench.yaml", "--junitxml=out.xml").assert_outcomes(failed=1)
    out = "".join(n.text or "" for n in ET.parse(screen.path / "out.xml").iter("system-out"))
    assert "Welcome to the talker board" in out and "line 02999" in out
    assert "characters omitted" in out
    assert len(out) < 80 * 1024


def test_bound_keeps_head_and_tail() -> None:
    from pytest_jumpstarter.reporting import bound

    text = "A" * 100 + "B" * 1000 + "C" * 100
    cut = bound(text, limit=300, head=100)
    assert cut.startswith("A" * 100) and cut.endswith("C" * 100) and "900 characters omitted" in cut
    assert bound("short", limit=300) == "short"


def test_a_console_wait_gives_up_before_pytest_timeout_with_the_tail(screen: pytest.Pytester) -> None:
    bench(screen, scope="session")
    screen.makepyfile(
        """
        def test_hangs(talker):
            talker.say("starting the long job")
            talker.console.expect("never printed")

        def test_next(talker):
            talker.say("still alive")
            talker.console.expect("still alive", timeout=5)
        """
    )
    for method in ("thread", "signal"):
        (screen.path / "events.log").unlink(missing_ok=True)
        # In a process of its own: pytest-timeout's thread method, should it fire, ends the process.
        result = screen.runpytest_subprocess(
            "--target=bench.yaml", "--timeout=4", f"--timeout-method={method}", "--junitxml=out.xml"
        )
        result.assert_outcomes(failed=1, passed=1)
        result.stdout.fnmatch_lines(["*ConsoleTimeout*", "*starting the long job*"])
        out = "".join(n.text or "" for n in ET.parse(screen.path / "out.xml").iter("system-out"))
        assert "starting the long job" in out
        # The board was mid-command: the next test got a fresh one.
        assert events(screen) == ["start talker", "stop talker", "start talker", "stop talker"]
        result.stdout.fnmatch_lines(["*talker stopped because the test timed out*"])


def test_a_hang_outside_the_console_still_reports_the_transcript(screen: pytest.Pytester) -> None:
    screen.makepyfile(
        """
        import threading

        def test_hangs(talker):
            talker.say("about to hang in python")
            talker.console.expect("hang in python")
            threading.Event().wait(60)
        """
    )
    result = screen.runpytest("--target=bench.yaml", "--timeout=3", "--timeout-method=signal")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Timeout*", "*Captured console talker call*", "*about to hang in python*"])


def test_a_hang_outside_the_console_under_the_thread_method_fails_the_test_not_the_run(
    screen: pytest.Pytester,
) -> None:
    bench(screen, scope="session")
    screen.makepyfile(
        """
        import socket, time

        def test_sleeps(talker):
            talker.say("about to sleep")
            talker.console.expect("about to sleep")
            time.sleep(60)

        def test_reads_a_silent_socket(talker):
            talker.say("about to read")
            talker.console.expect("about to read")
            near, far = socket.socketpair()
            near.recv(1)

        def test_next(talker):
            talker.say("still alive")
            talker.console.expect("still alive", timeout=5)
        """
    )
    result = screen.runpytest_subprocess(
        "--target=bench.yaml", "--timeout=3", "--timeout-method=thread", "--junitxml=out.xml"
    )
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(["*jumpstarter interrupted it before pytest-timeout's kill*"])
    junit = ET.parse(screen.path / "out.xml")
    failures = {c.get("name"): c.find("failure") for c in junit.iter("testcase")}
    for name, said in (
        ("test_sleeps[bench]", "about to sleep"),
        ("test_reads_a_silent_socket[bench]", "about to read"),
    ):
        failure = failures[name]
        assert failure is not None and "Timeout (>3.0s from pytest-timeout" in (failure.get("message") or "")
        assert said in (failure.text or "").partition("last console lines of talker:")[2]
    assert failures["test_next[bench]"] is None
    out = "".join(n.text or "" for n in junit.iter("system-out"))
    assert "about to sleep" in out and "about to read" in out
    # The kept board was mid-test each time: the next test got a fresh one.
    assert events(screen).count("start talker") == 3


def test_a_debugging_session_is_not_interrupted(screen: pytest.Pytester) -> None:
    # pytest-timeout holds back while a debugger is at work (pdb sets this flag): the watchdog too.
    screen.makepyfile(
        """
        import time
        import pytest_timeout

        def test_in_the_debugger(talker):
            pytest_timeout.SUPPRESS_TIMEOUT = True
            time.sleep(2)
        """
    )
    result = screen.runpytest_subprocess("--target=bench.yaml", "--timeout=1", "--timeout-method=thread")
    result.assert_outcomes(passed=1)
    assert "is stuck past its" not in result.stdout.str()


def test_a_sigusr2_from_elsewhere_fails_nothing(screen: pytest.Pytester) -> None:
    screen.makepyfile(
        """
        import os, signal

        def test_signalled(talker):
            os.kill(os.getpid(), signal.SIGUSR2)
        """
    )
    result = screen.runpytest_subprocess("--target=bench.yaml", "--timeout=30", "--timeout-method=thread")
    result.assert_outcomes(passed=1)


def test_a_hang_the_main_thread_cannot_leave_still_leaves_its_console_log(screen: pytest.Pytester) -> None:
    screen.makepyfile(
        """
        import signal, time

        def test_hangs(talker):
            talker.say("about to hang with signals blocked")
            talker.console.expect("signals blocked")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
            time.sleep(60)
        """
    )
    logs = screen.path / "logs"
    result = screen.runpytest_subprocess(
        "--target=bench.yaml", "--timeout=3", "--timeout-method=thread", f"--jumpstarter-logdir={logs}"
    )
    assert result.ret == 1
    log = logs / "test_a_hang_the_main_thread_cannot_leave_still_leaves_its_console_log.py_test_hangs_bench"
    result.stdout.fnmatch_lines(
        [
            "jumpstarter: *::test_hangs[[]bench[]] is stuck past its 3.0s budget where it cannot be interrupted:"
            " pytest-timeout (thread method) ends this run in *s, without a report",
            f"devices: talker: console log {log / 'talker.log'}",
            "last console lines of talker:",
            "    about to hang with signals blocked",
            "*Timeout*",
        ]
    )
    assert "about to hang with signals blocked" in (log / "talker.log").read_text()


def test_a_kept_boards_boot_is_charged_to_setup_not_the_test_budget(screen: pytest.Pytester) -> None:
    # The board takes ~2 s to boot, the test 2 s more; a 3 s budget covers each but not both.
    screen.syspathinsert()
    screen.makepyfile(
        slow_boot="""
        import threading, pytest

        @pytest.hookimpl
        def pytest_jumpstarter_device_ready(device, item):
            if device.ctx.name == "talker" and not getattr(device, "_slow", False):
                device._slow = True
                threading.Event().wait(2)  # the board's boot, as slow as a real one
        """,
        test_budget="""
        import threading

        def test_work(talker):
            threading.Event().wait(2)
        """,
    )
    bench(screen, scope="session")
    result = screen.runpytest("--target=bench.yaml", "--timeout=3", "-p", "slow_boot", "test_budget.py")
    result.assert_outcomes(passed=1)


def test_rerun_gets_a_restored_board_and_its_own_sections(screen: pytest.Pytester) -> None:
    bench(screen, scope="session", reset="snapshot")
    screen.makepyfile(
        """
        attempts = []

        def test_flaky(talker):
            attempts.append(1)
            talker.say(f"attempt {len(attempts)}")
            talker.console.expect("attempt")
            assert len(attempts) == 2
        """
    )
    result = screen.runpytest(
        "--target=bench.yaml",
        "--reruns=1",
        "-p",
        "rerunfailures",
        "--junitxml=out.xml",
        "--jumpstarter-logdir=logs",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 passed, 1 rerun*"])
    assert events(screen) == ["start talker", "restore talker snapshot", "stop talker"]
    junit = ET.parse(screen.path / "out.xml")
    out = "".join(n.text or "" for n in junit.iter("system-out"))
    assert "attempt 2" in out and "attempt 1" not in out
    # Each attempt's console log is a file of its own; the report names the last attempt's.
    logs = {p.parent.name: p.read_text() for p in (screen.path / "logs").glob("*/talker.log")}
    first = "test_rerun_gets_a_restored_board_and_its_own_sections.py_test_flaky_bench"
    second = f"{first}-attempt2"
    assert set(logs) == {first, second}, logs
    assert "attempt 1" in logs[first] and "attempt 2" not in logs[first]
    assert "attempt 2" in logs[second] and "attempt 1" not in logs[second]
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props["jumpstarter_log_talker"] == str(screen.path / "logs" / second / "talker.log")
    assert f"[[ATTACHMENT|{screen.path / 'logs' / second / 'talker.log'}]]" in out


def test_device_fixture_users_count_as_marked_for_m(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "t.yaml", "name: t\ndevices:\n  rec: {driver: rec}\n")
    rec_pytester.makepyfile(
        """
        import pytest

        def test_fixture_user(rec):
            pass

        @pytest.mark.device
        def test_marked():
            pass

        def test_plain():
            pass
        """
    )
    not_device = rec_pytester.runpytest("--target=t.yaml", "-m", "not device", "-v")
    not_device.assert_outcomes(passed=1, deselected=2)
    not_device.stdout.fnmatch_lines(["*test_plain PASSED*"])
    device = rec_pytester.runpytest("--target=t.yaml", "-m", "device", "-v")
    device.assert_outcomes(passed=2, deselected=1)
    no_target = rec_pytester.runpytest("-m", "not device")
    no_target.assert_outcomes(passed=1, deselected=2)


def test_every_option_has_an_ini_key_of_its_name(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "boards/t.yaml", "name: t\ndevices:\n  rec: {driver: rec, say: hello}\n")
    rec_pytester.makeini(
        """
        [pytest]
        jumpstarter_target = boards/t.yaml
        jumpstarter_logdir = ini-logs
        jumpstarter_lock_timeout = 7
        jumpstarter_progress = off
        """
    )
    rec_pytester.makepyfile("def test_boot(rec):\n    pass\n")
    result = rec_pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert [p.read_text() for p in (rec_pytester.path / "ini-logs").rglob("rec.log")] == ["hello\n"]
    assert "jumpstarter: rec" not in result.stdout.str()
    listing = rec_pytester.runpytest("-o", "jumpstarter_list=true")
    listing.stdout.fnmatch_lines(["*t*boards/t.yaml*"])
    assert listing.ret == 0


def test_progress_says_each_device_once_and_nothing_with_q(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "t.yaml", "name: t\ndevices:\n  rec: {driver: rec}\n")
    rec_pytester.makepyfile("def test_boot(rec):\n    rec.ctx.progress('rec: writing 50%')\n")
    result = rec_pytester.runpytest("--target=t.yaml")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["jumpstarter: rec: starting ...", "jumpstarter: rec: starting: done in *s"])
    assert "rec: rec" not in result.stdout.str()
    quiet = rec_pytester.runpytest("--target=t.yaml", "-q")
    assert "jumpstarter: rec" not in quiet.stdout.str()
    tty = rec_pytester.runpytest("--target=t.yaml", "--jumpstarter-progress=line")
    # On a tty the line is rewritten in place (a carriage return, padded to erase the old text).
    tty.stdout.fnmatch_lines(["jumpstarter: rec: starting ...", "jumpstarter: rec: starting: done in *s *"])
    tty.stdout.fnmatch_lines(["jumpstarter: rec: writing 50%"])


LOADGROUP_TARGET = """name: t
devices:
  rec: {driver: rec, scope: session}
  mod: {driver: other, role: mod, scope: module}
  leased: {driver: other, role: leased, exclusive: true}
  spare: {driver: other}
"""


def loadgroup_tests(module: str) -> str:
    tests = [
        f"@pytest.mark.device('mod')\ndef test_{module}_mod_{i}(jumpstarter_target):\n"
        "    jumpstarter_target.device('mod')\n"
        for i in range(3)
    ]
    if module == "a":
        tests += [f"def test_kept_{i}(rec):\n    pass\n" for i in range(4)]
        tests += [f"def test_free_{i}(other):\n    pass\n" for i in range(4)]
        tests += [
            f"@pytest.mark.device('leased')\ndef test_leased_{i}(jumpstarter_target):\n"
            "    jumpstarter_target.device('leased')\n"
            for i in range(3)
        ]
    return "import pytest\n\n" + "\n".join(tests)


def test_loadgroup_keeps_a_kept_or_exclusive_board_on_one_worker(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "t.yaml", LOADGROUP_TARGET)
    rec_pytester.makepyfile(test_a=loadgroup_tests("a"), test_b=loadgroup_tests("b"))
    result = rec_pytester.runpytest(
        "--target=t.yaml",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "-v",
        "--junitxml=out.xml",
        "--jumpstarter-lock-dir=locks",
    )
    result.assert_outcomes(passed=17)
    worker: dict[str, str] = {}
    for line in result.stdout.lines:
        found = re.match(r"\[(gw\d+)\] \[ *\d+%\] PASSED \S+::(\S+)", line)
        if found:
            worker[found[2]] = found[1]
    assert len(worker) == 17, result.stdout.str()
    for group in ("test_kept_", "test_leased_", "test_a_mod_", "test_b_mod_"):
        assert len({w for name, w in worker.items() if name.startswith(group)}) == 1, (group, worker)
    log = events(rec_pytester)
    assert log.count("start t/rec") == 1 and log.count("start t/mod") == 2
    # The group travels to xdist's scheduler only: reports keep the plain test ids.
    names = [case.get("name", "") for case in ET.parse(rec_pytester.path / "out.xml").iter("testcase")]
    assert "test_kept_0[t]" in names and not any("@" in n for n in names)


def test_pytest_embedded_and_this_plugin_start_together(pytester: pytest.Pytester) -> None:
    compat = Path(sys.prefix) / "compat"
    if not (compat / "pytest_embedded").is_dir():
        pytest.skip(f"pytest-embedded is not in {compat} (./bootstrap.sh test installs it there)")
    pytester.makeconftest(SCREEN_CONFTEST)
    bench(pytester)
    pytester.makepyfile("def test_boot(talker):\n    assert talker.started\n")
    env = {**os.environ, "PYTHONPATH": str(compat), "BENCH_TOKEN": "x"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--jumpstarter-target=bench.yaml", "-v"],
        cwd=pytester.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--target belongs to another plugin" in proc.stdout
    assert "test_boot[bench] PASSED" in proc.stdout
    assert "pytest-embedded" in proc.stdout or "embedded" in proc.stdout


def test_allure_gets_the_console_and_no_internal_parameter(screen: pytest.Pytester) -> None:
    pytest.importorskip("allure_pytest")
    screen.makepyfile(FAILING)
    screen.runpytest("--target=bench.yaml", "--alluredir=allure").assert_outcomes(failed=1)
    (result_file,) = (screen.path / "allure").glob("*-result.json")
    data = json.loads(result_file.read_text())
    shown = {p["name"]: p.get("mode") for p in data["parameters"]}
    assert shown.get("_jumpstarter_target") == "hidden" and "target" in shown
    attachments = {a["name"]: a["source"] for a in data["attachments"]}
    console = (screen.path / "allure" / attachments["console talker"]).read_text()
    assert "login: root" in console and "hunter2-secret" not in console
    assert (screen.path / "allure" / attachments["screen talker"]).read_bytes().startswith(b"\x89PNG")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    browser = chromium()
    assert browser is not None
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def test_html_report_shows_console_and_screenshot_in_a_real_browser(
    screen: pytest.Pytester, tmp_path: Path
) -> None:
    pytest.importorskip("pytest_html")
    if chromium() is None:
        pytest.skip("no chromium (./bootstrap.sh installs Debian's)")
    screen.makepyfile(FAILING)
    result = screen.runpytest("--target=bench.yaml", "--html=report.html", "--self-contained-html")
    result.assert_outcomes(failed=1)
    report = screen.path / "report.html"
    dom = run_chromium(["--virtual-time-budget=5000", "--dump-dom", report.as_uri()], tmp_path / "p1")
    assert "login: root" in dom.stdout, dom.stderr[-2000:]
    assert "hunter2-secret" not in dom.stdout
    assert 'src="data:image/png;base64,' in dom.stdout
    assert "console talker" in dom.stdout and "log folder" in dom.stdout
    shot = tmp_path / "page.png"
    run_chromium([f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()], tmp_path / "p2")
    assert shot.read_bytes().startswith(b"\x89PNG")
