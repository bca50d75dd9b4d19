"""Secrets never reach any output: log files (also when split across console reads), terminal, JUnit, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from core_support import write
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_jumpstarter import Redactor, Transcript

SECRET = "s3cr3t-pw"


def _through(transcript: Transcript, pieces: list[str], log: Path) -> str:
    transcript.begin(log)
    for piece in pieces:
        transcript.write(piece)
        transcript.flush()
    return transcript.end()


@pytest.mark.parametrize("cut", range(1, len(SECRET)))
def test_a_secret_split_across_two_reads_is_masked_in_the_log_file(tmp_path: Path, cut: int) -> None:
    log = tmp_path / "rec.log"
    text = f"password: {SECRET}\n"
    at = text.index(SECRET) + cut
    report = _through(Transcript(Redactor([SECRET])), [text[:at], text[at:]], log)
    assert log.read_text() == report == "password: ***\n"


def test_held_back_text_reaches_the_log_when_the_section_ends(tmp_path: Path) -> None:
    # The end of a read that might start a secret waits for the next read, but is not lost.
    log = tmp_path / "rec.log"
    report = _through(Transcript(Redactor([SECRET])), ["login: s3c"], log)
    assert log.read_text() == report == "login: s3c"


pieces_of = st.lists(st.sampled_from(["s3cr3t-pw", "s3c", "r3t", "-pw", "pw", "abc", "abcdef", "\r\n", "x"]))


@settings(max_examples=300, deadline=None)
@given(words=pieces_of, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_log_file_equals_the_whole_text_redacted_however_it_is_read(
    tmp_path_factory: pytest.TempPathFactory, words: list[str], cuts: list[int]
) -> None:
    text = "".join(words)
    bounds = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    redact = Redactor([SECRET, "abcdef", "r3t"])
    log = tmp_path_factory.mktemp("t") / "rec.log"
    report = _through(Transcript(redact), pieces, log)
    assert report == redact(text)
    assert (log.read_bytes().decode() if log.exists() else "") == redact(text)


LEAKY = """
import pytest
from dataclasses import dataclass
from pytest_jumpstarter import Driver, DriverError, device_fixture


@dataclass(frozen=True)
class LeakySettings:
    password: str = ""


class Leaky(Driver[LeakySettings]):
    name = "leaky"
    role = "leaky"

    def start(self):
        # The console hands the secret over in two reads, as a slow serial line does.
        pw = self.ctx.settings.password
        self.ctx.transcript.write("login: root\\npassword: " + pw[:4])
        self.ctx.transcript.write(pw[4:] + "\\n# ")
        self.started = True

    def fail(self):
        raise DriverError(self.ctx.name, f"login refused for password {self.ctx.settings.password}")


leaky = device_fixture("leaky")


@pytest.hookimpl
def pytest_jumpstarter_add_drivers():
    return [Leaky]
"""


def test_secrets_stay_out_of_terminal_junit_logs_and_errors(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JS_SECRET", SECRET)
    pytester.makeconftest(LEAKY)
    write(
        pytester,
        "t.yaml",
        "name: t\nsecrets: [JS_SECRET]\ndevices:\n  leaky: {driver: leaky, password: '${JS_SECRET}'}\n",
    )
    pytester.makepyfile(
        """
        def test_fails(leaky):
            leaky.fail()

        def test_prints(leaky):
            print("the password is", leaky.ctx.settings.password)
            assert False
        """
    )
    logdir, junit = pytester.path / "logs", pytester.path / "junit.xml"
    result = pytester.runpytest(
        "--target=t.yaml", f"--jumpstarter-logdir={logdir}", f"--junitxml={junit}", "-rA"
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*login refused for password [*][*][*]*", "*password: [*][*][*]*"])
    logs = [p.read_text() for p in logdir.rglob("*.log")]
    assert logs and all("password: ***" in text for text in logs)
    outputs = {
        "terminal": result.stdout.str() + result.stderr.str(),
        "junit": junit.read_text(),
        "logs": "".join(logs),
    }
    leaked = [name for name, text in outputs.items() if SECRET in text or SECRET[4:] + "\n" in text]
    assert not leaked, f"the secret appears in: {leaked}"
