"""Booted states kept across runs: the cache folder's rules without QEMU, then real restores."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, cast

import pytest
from pytest_jumpstarter_qemu import QemuBoard, statecache
from pytest_jumpstarter_qemu.images import Images
from pytest_jumpstarter_qemu.qmp import Qmp
from pytest_jumpstarter_qemu.statecache import FileFacts, StateCache, make_key
from pytest_jumpstarter_qemu.warm import SAVE_BANDWIDTH, _pass_file
from qemu_board_helpers import linux_settings, uboot_settings

from pytest_jumpstarter.driver import DeviceContext, Transcript
from pytest_jumpstarter.errors import DriverError


def fake_entry(cache: StateCache, name: str, size: int = 10) -> str:
    key = make_key({"n": name})
    with cache.writer(key) as tmp:
        assert tmp is not None
        (tmp / "state").write_bytes(b"x" * size)
        cache.publish_meta(tmp, {"n": name})
    return key


def test_an_entry_appears_whole_and_a_second_writer_of_the_same_key_stands_aside(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    key = make_key({"n": 1})
    with cache.writer(key) as tmp:
        assert tmp is not None
        (tmp / "state").write_bytes(b"half")
        assert cache.lookup(key, {"n": 1}) == (None, None)  # readers see nothing yet
        with cache.writer(key) as other:
            assert other is None  # the same key is being written: this worker boots cold only
        cache.publish_meta(tmp, {"n": 1})
    entry, problem = cache.lookup(key, {"n": 1})
    assert problem is None and entry is not None and entry.state.read_bytes() == b"half"
    with cache.writer(key) as again:
        assert again is None  # it exists already
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_truncated_and_foreign_entries_are_deleted_with_the_reason(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    key = fake_entry(cache, "a", size=100)
    with open(tmp_path / key / "state", "r+b") as f:
        f.truncate(40)
    assert cache.lookup(key, {"n": "a"}) == (None, f"cache entry {key} was unusable: its state file is truncated "
                                             "(40 of 100 bytes); deleted")  # fmt: skip
    assert not (tmp_path / key).exists()
    key = fake_entry(cache, "b")
    entry, problem = cache.lookup(key, {"n": "other QEMU"})
    assert entry is None and problem is not None and "another QEMU" in problem
    (tmp_path / "junk").mkdir()
    assert cache.lookup("junk", {})[1] is not None and not (tmp_path / "junk").exists()


def test_eviction_keeps_the_most_recently_used_within_the_bounds(tmp_path: Path) -> None:
    cache = StateCache(tmp_path, max_entries=2, max_bytes=1 << 30)
    first = fake_entry(cache, "1")
    second = fake_entry(cache, "2")
    os.utime(tmp_path / second / "meta.json", (time.time() - 100, time.time() - 100))
    assert cache.lookup(first, {"n": "1"})[0] is not None  # used now: the newest
    third = fake_entry(cache, "3")
    assert sorted(e.key for e in cache.entries()) == sorted([first, third])
    assert cache.clear() == 2 and cache.entries() == []


def test_file_facts_are_kept_across_runs_until_the_file_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FileFacts, "SETTLE_NS", 0)
    memo: dict[str, list[Any]] = {}
    monkeypatch.setattr(statecache, "_MEMO", memo)  # this process's memo; cleared for "another run"
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"a" * 100)
    store = tmp_path / "cache" / FileFacts.NAME
    computed: list[bytes] = []

    def digest(path: Path) -> str:
        computed.append(path.read_bytes())
        return hashlib.sha256(computed[-1]).hexdigest()

    first = FileFacts(store).get(kernel, "sha256", digest)
    assert FileFacts(store).get(kernel, "sha256", digest) == first  # the same process: its memo
    memo.clear()
    assert FileFacts(store).get(kernel, "sha256", digest) == first  # a second run: from the store
    assert len(computed) == 1
    # Same size, mtime put back (as cp -p does): only ctime tells; wait for the file clock to move.
    old = kernel.stat()
    deadline = time.monotonic() + 5.0
    while kernel.stat().st_ctime_ns == old.st_ctime_ns and time.monotonic() < deadline:
        kernel.write_bytes(b"b" * 100)
        os.utime(kernel, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert FileFacts(store).get(kernel, "sha256", digest) == hashlib.sha256(b"b" * 100).hexdigest()
    memo.clear()
    assert FileFacts(store, write=False).get(kernel, "sha256", digest)  # read mode: from the store
    assert len(computed) == 2
    monkeypatch.setattr(FileFacts, "SETTLE_NS", 10**12)  # changed just now: never memoized
    kernel.write_bytes(b"c" * 100)
    FileFacts(store).get(kernel, "sha256", digest)
    FileFacts(store).get(kernel, "sha256", digest)
    assert computed[-2:] == [b"c" * 100] * 2
    assert StateCache(tmp_path / "cache").clear() == 0 and not store.exists()


def test_a_state_file_gone_before_it_is_opened_is_a_driver_error_so_the_board_boots_cold(
    tmp_path: Path,
) -> None:
    # An entry another run evicted between the lookup and the load: os.open fails before QMP is used.
    with pytest.raises(DriverError, match=r"cannot open the booted state .*gone.*No such file"):
        _pass_file(cast(Qmp, None), tmp_path / "gone", os.O_RDONLY, "qemu_vm")


def cached_board(settings: dict[str, Any], workdir: Path, cache_dir: Path, mode: str = "on") -> QemuBoard:
    workdir.mkdir(parents=True, exist_ok=True)
    return QemuBoard(
        DeviceContext(
            name="qemu_vm", target="warm", settings=QemuBoard.settings_from(settings, workdir),
            workdir=workdir, transcript=Transcript(), extra={"cache_mode": mode, "cache_dir": cache_dir},
        )
    )  # fmt: skip


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_a_linux_board_starts_from_its_kept_state_with_the_host_clock_and_fresh_forwards(
    tmp_path: Path, images: Images
) -> None:
    settings = linux_settings(images, network={"forwards": {"echo": 7}})
    cache_dir = tmp_path / "cache"
    cold = cached_board(settings, tmp_path / "cold", cache_dir)
    try:
        cold.start()
        assert cold.warm.note is None and "save" in cold.warm.timings
        # The save is not held to QEMU's live-migration default of 128 MiB/s (0.76 s for this state).
        parameters = cold.execute("query-migrate-parameters")
        assert parameters["max-bandwidth"] == SAVE_BANDWIDTH, parameters
        cold.console.run("echo from-the-cold-board > /tmp/mark")
    finally:
        cold.stop()
    (entry,) = StateCache(cache_dir).entries()
    warm = cached_board(settings, tmp_path / "warm", cache_dir)
    try:
        warm.start()
        assert warm.warm.note is not None and "started from cache entry" in warm.warm.note
        assert warm.console.run("cat /tmp/mark 2>/dev/null; echo .").output == "."  # saved before the test
        guest = int(warm.console.run("date +%s").output)
        assert abs(guest - time.time()) < 5, "the guest clock is the host's after a restore"
        with socket.create_connection(("127.0.0.1", warm.forward("echo")), timeout=10) as conn:
            conn.sendall(b"ping\n")
            assert conn.recv(16) == b"ping\n"
        # A power cycle is a reboot, not another restore of the same state.
        boot_id = "cat /proc/sys/kernel/random/boot_id"
        before = warm.console.run(boot_id).check().output
        warm.cycle()
        assert warm.console.run(boot_id).check().output != before
    finally:
        warm.stop()
    with open(entry.state, "r+b") as f:  # a half-written file, as a crash would leave one
        f.truncate(entry.size // 2)
    again = cached_board(settings, tmp_path / "again", cache_dir)
    try:
        again.start()
        assert again.warm.note is not None and "truncated" in again.warm.note
        assert again.console.run("echo booted").output == "booted"
    finally:
        again.stop()
    (fresh,) = StateCache(cache_dir).entries()
    assert fresh.state.stat().st_size == fresh.size  # replaced by the cold boot's state


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_read_mode_never_writes_and_cache_false_boots_cold(tmp_path: Path, images: Images) -> None:
    cache_dir = tmp_path / "cache"
    board = cached_board(linux_settings(images), tmp_path / "r", cache_dir, mode="read")
    try:
        board.start()
    finally:
        board.stop()
    assert StateCache(cache_dir).entries() == []
    assert not cache_dir.exists() or list(cache_dir.iterdir()) == [], "read mode wrote into the cache"
    board = cached_board(linux_settings(images, cache=False), tmp_path / "f", cache_dir)
    assert board.warm.off_reason == "cache: false"


@pytest.mark.qemu
@pytest.mark.timeout(120)
def test_a_uboot_board_starts_from_its_kept_prompt_and_answers_after_the_save(
    tmp_path: Path, images: Images
) -> None:
    settings = uboot_settings(images)
    cache_dir = tmp_path / "cache"
    cold = cached_board(settings, tmp_path / "cold", cache_dir)
    try:
        cold.start()
        assert "save" in cold.warm.timings
        # The source QEMU runs on after stop, migrate and cont: its U-Boot still reads its console.
        assert cold.uboot.run("echo after-save").output == "after-save"
        cold.uboot.run("setenv jsmark from-the-cold-board").check()
    finally:
        cold.stop()
    for n in range(2):
        warm = cached_board(settings, tmp_path / f"warm{n}", cache_dir)
        try:
            warm.start()
            assert warm.warm.note is not None and "started from cache entry" in warm.warm.note
            assert warm.uboot.run("printenv jsmark").status != 0  # saved before the change
            assert "U-Boot" in warm.uboot.run("version").check().output
        finally:
            warm.stop()


def test_the_listing_says_hit_or_miss_per_board_without_starting_one(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".yaml",
        board="""
        name: q
        devices:
          qemu_vm: {driver: qemu, kernel: vmlinuz}
          cold_vm: {driver: qemu, kernel: vmlinuz, role: other, cache: false}
        """,
    )
    (pytester.path / "vmlinuz").write_bytes(b"a kernel")
    pytester.makepyfile("def test_boot(qemu_vm):\n    pass\n")
    cache = pytester.path / "cache"
    args = [
        "--target=board.yaml",
        "--jumpstarter-list",
        "--jumpstarter-cache=on",
        f"--jumpstarter-cache-dir={cache}",
    ]
    result = pytester.runpytest(*args)
    result.stdout.fnmatch_lines(["*qemu_vm: driver qemu*", "*cache: miss (entry * in *cache)*"])
    result.stdout.fnmatch_lines(["*cold_vm: driver qemu*", "*cache: off (cache: false)*"])
    key = result.stdout.str().split("cache: miss (entry ")[1].split()[0]
    (cache / key).mkdir(parents=True)
    (cache / key / "meta.json").write_text('{"size": 1048576}')
    pytester.runpytest(*args).stdout.fnmatch_lines([f"*cache: hit (entry {key}, 1 MiB)*"])
    pytester.runpytest(*args, "--jumpstarter-cache=off").stdout.fnmatch_lines(
        ["*cache: off (--jumpstarter-cache=off)*"]
    )
    assert pytester.runpytest("--jumpstarter-cache-clear", f"--jumpstarter-cache-dir={cache}").ret == 0
    assert not (cache / key).exists()


FRESH_TESTS = r"""
import json

import pytest


@pytest.mark.parametrize("n", range(3))
def test_a_brand_new_board(qemu_vm, n):
    run = qemu_vm.console.run
    assert run("test -e /root/left-behind").status == 1, "a file from an earlier test survived"
    run("touch /root/left-behind").check()
    with open("@RECORDS@", "a") as f:
        f.write(json.dumps({"pid": qemu_vm.pid, "boots": qemu_vm.boots}) + "\n")
"""


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_scope_test_boards_are_new_qemus_started_from_the_kept_state(
    pytester: pytest.Pytester, images: Images
) -> None:
    records = pytester.path / "records.jsonl"
    pytester.makefile(
        ".yaml",
        board=f"""
        name: fresh
        devices:
          qemu_vm: {{driver: qemu, scope: test, kernel: {images.linux_kernel}, initrd: {images.linux_initrd}}}
        """,
    )
    pytester.makepyfile(test_fresh=FRESH_TESTS.replace("@RECORDS@", str(records)))
    cache = pytester.path / "cache"
    result = pytester.runpytest_subprocess(
        "--target=board.yaml",
        "-rP",
        "-p",
        "no:cacheprovider",
        "--jumpstarter-cache=on",
        f"--jumpstarter-cache-dir={cache}",
    )
    result.assert_outcomes(passed=3)
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert len({r["pid"] for r in rows}) == 3, f"each test must get its own QEMU: {rows}"
    # The first test's board booted and kept its state; the next two started from it.
    assert result.stdout.str().count("started from cache entry") == 2
    assert len(StateCache(cache).entries()) == 1
