"""The folders a run uses: unusable log and lock folders are usage errors at start, the work folders
of dead runs are swept by the next run, sockets go where their path fits, a full log stops quietly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from core_support import write

from pytest_jumpstarter import Redactor, Transcript
from pytest_jumpstarter.errors import FolderError
from pytest_jumpstarter.workfiles import OWNER_FILE, UNIX_PATH_MAX, owned_tempdir, socket_dir, sweep

BOARD = "name: t\ndevices:\n  rec: {driver: rec}\n"


@pytest.mark.parametrize("shape", ["is a file", "under a file"])
def test_an_unusable_log_folder_is_a_usage_error_naming_option_and_path(
    rec_pytester: pytest.Pytester, shape: str
) -> None:
    write(rec_pytester, "t.yaml", BOARD)
    rec_pytester.makepyfile("def test_x(rec):\n    rec.ctx.transcript.write('hello\\n')\n")
    (rec_pytester.path / "logs").write_text("not a folder")
    given = "logs" if shape == "is a file" else "logs/deeper"
    result = rec_pytester.runpytest("--target=t.yaml", f"--jumpstarter-logdir={given}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    wanted = (
        "it is a file"
        if shape == "is a file"
        else f"it is under {rec_pytester.path / 'logs'}, which is a file"
    )
    result.stderr.fnmatch_lines(
        [f"*--jumpstarter-logdir {rec_pytester.path / given} cannot hold console logs: {wanted}*"]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_lock_folder_that_is_a_file_is_a_usage_error_naming_the_option(
    rec_pytester: pytest.Pytester,
) -> None:
    write(rec_pytester, "t.yaml", "name: t\ndevices:\n  rec: {driver: rec, exclusive: true}\n")
    rec_pytester.makepyfile("def test_x(rec):\n    pass\n")
    (rec_pytester.path / "locks").write_text("")
    result = rec_pytester.runpytest("--target=t.yaml", "--jumpstarter-lock-dir=locks")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--jumpstarter-lock-dir / $JUMPSTARTER_LOCK_DIR * cannot hold leases: it is a file*"]
    )
    assert "FileExistsError" not in result.stdout.str() + result.stderr.str()


def test_a_lease_in_a_lock_folder_that_is_a_file_says_which_folder(tmp_path: Path) -> None:
    from pytest_jumpstarter.locking import DeviceLease

    (tmp_path / "locks").write_text("")
    with pytest.raises(
        FolderError, match=r"lock folder .*locks \(--jumpstarter-lock-dir.*it or a parent is a file"
    ):
        DeviceLease("t/rec", lock_dir=tmp_path / "locks")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_sweep_removes_folders_of_dead_owners_and_keeps_the_living(tmp_path: Path) -> None:
    mine = owned_tempdir("pytest-jumpstarter-", tmp_path)
    dead = owned_tempdir("jsq-", tmp_path)
    record = json.loads((dead / OWNER_FILE).read_text())
    (dead / OWNER_FILE).write_text(json.dumps({**record, "pid": _dead_pid()}))
    (dead / "console.sock").write_text("")
    rebooted = owned_tempdir("jsnet-", tmp_path)
    (rebooted / OWNER_FILE).write_text(json.dumps({**record, "boot": "an-earlier-boot"}))
    unowned = tmp_path / "pytest-jumpstarter-old"  # no record: nothing proves its owner dead
    unowned.mkdir()
    other = tmp_path / "someone-elses"
    other.mkdir()
    (other / OWNER_FILE).write_text(json.dumps({**record, "pid": _dead_pid()}))
    assert sorted(sweep(tmp_path)) == sorted([dead, rebooted])
    assert mine.is_dir() and unowned.is_dir() and other.is_dir()


def test_a_killed_owner_not_yet_reaped_is_dead(tmp_path: Path) -> None:
    # An xdist worker killed with -9 stays a zombie until its parent reaps it; the replacement worker
    # sweeps at its start, before that: a zombie runs nothing and holds no file, so its folders go.
    owner = subprocess.Popen(["sleep", "30"])
    try:
        folder = owned_tempdir("jsq-", tmp_path)
        record = json.loads((folder / OWNER_FILE).read_text())
        start = Path(f"/proc/{owner.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        (folder / OWNER_FILE).write_text(json.dumps({**record, "pid": owner.pid, "start": start}))
        assert sweep(tmp_path) == []  # alive: kept
        os.kill(owner.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _state(owner.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)  # the kernel delivers SIGKILL asynchronously
        assert _state(owner.pid) == "Z"
        assert sweep(tmp_path) == [folder]
    finally:
        owner.kill()
        owner.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_sigkilled_run_leaves_work_folders_that_the_next_run_sweeps(
    rec_pytester: pytest.Pytester, tmp_path: Path
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    write(rec_pytester, "t.yaml", BOARD)
    rec_pytester.makepyfile(
        "import os, signal\n\ndef test_x(rec):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--target=t.yaml"]
    killed = subprocess.run(cmd, cwd=rec_pytester.path, env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9
    left = sorted(p.name for p in tmpdir.iterdir() if p.name.startswith("pytest-jumpstarter-"))
    assert left, "the killed run made no work folder"
    rec_pytester.makepyfile("def test_x(rec):\n    pass\n")
    again = subprocess.run(cmd, cwd=rec_pytester.path, env=env, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stdout.decode()
    assert not [p for p in tmpdir.iterdir() if p.name in left]


def test_sockets_go_where_their_path_fits_whatever_tmpdir_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_tmp = tmp_path / ("x" * 100)
    long_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    folder = socket_dir("jsq-", longest_name=12)
    try:
        assert len(os.fsencode(folder / "console.sock")) <= UNIX_PATH_MAX
        assert (folder / OWNER_FILE).is_file()
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


def test_a_log_folder_that_fails_mid_test_stops_the_log_not_the_console(tmp_path: Path) -> None:
    transcript = Transcript(Redactor([]))
    transcript.begin(Path("/dev/full"))  # every write to it fails with ENOSPC
    transcript.write("x" * 10)
    transcript.flush()
    transcript.write("the rest\n")
    report = transcript.end()
    assert "console log /dev/full stopped: No space left on device" in report
    assert report.endswith("the rest\n")
