"""put/get on the demo board over every channel, always checked on the board; fallbacks; corruption."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images
from pytest_jumpstarter_ssh import Files, SshShell
from ssh_support import board, files_on

from pytest_jumpstarter import TransferError

MIB = 1024 * 1024
#: The size moved over ssh and http; JUMPSTARTER_FILES_MIB makes it smaller for a quick run.
BIG = int(os.environ.get("JUMPSTARTER_FILES_MIB", "64")) * MIB
#: The console moves ~50 KiB/s into the board (bench/RESULTS-files.md): 64 MiB would take ~25 min there.
CONSOLE_BIG = int(os.environ.get("JUMPSTARTER_CONSOLE_MIB", "2")) * MIB


@pytest.fixture
def big_file(channel_files: Files, tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(CONSOLE_BIG if channel_files.config.channel == "console" else BIG))
    return path


def started(files: Files) -> Iterator[Files]:
    files.start()
    try:
        yield files
    finally:
        files.stop()


@pytest.fixture(params=["ssh", "http", "console"])
def channel_files(
    request: pytest.FixtureRequest, qemu: QemuBoard, ssh: SshShell, tmp_path: Path
) -> Iterator[Files]:
    channel = request.param
    yield from started(files_on(qemu, tmp_path / "files", ssh if channel == "ssh" else None, channel=channel))


def test_put_and_get_a_big_file_verified(channel_files: Files, big_file: Path, tmp_path: Path) -> None:
    sent = channel_files.put(big_file, "/tmp/big.bin")
    assert (sent.channel, sent.size, sent.files) == (channel_files.config.channel, big_file.stat().st_size, 1)
    back = channel_files.get("/tmp/big.bin", tmp_path / "back.bin")
    assert back.sha256 == sent.sha256
    assert (tmp_path / "back.bin").read_bytes() == big_file.read_bytes()
    channel_files._shell().run("rm -f /tmp/big.bin").check()


def test_put_and_get_a_folder(channel_files: Files, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (tree / "sub" / "deeper" / "c").write_bytes(b"")
    sent = channel_files.put(tree, "/tmp/tree")
    assert sent.files == 3
    back = channel_files.get("/tmp/tree", tmp_path / "back")
    assert back.sha256 == sent.sha256
    for rel in ("a.txt", "sub/b.bin", "sub/deeper/c"):
        assert (tmp_path / "back" / rel).read_bytes() == (tree / rel).read_bytes()
    channel_files._shell().run("rm -rf /tmp/tree").check()


def test_a_corrupted_transfer_is_caught(channel_files: Files, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(200_000))
    channel = channel_files._pick()
    clean = channel.chunks

    def flipped(local: Path) -> Iterator[bytes]:
        for i, block in enumerate(clean(local)):
            yield bytes([block[0] ^ 0xFF]) + block[1:] if i == 0 else block

    channel.chunks = flipped  # type: ignore[method-assign]
    with pytest.raises(TransferError) as info:
        channel_files.put(data, "/tmp/data.bin")
    message = str(info.value)
    assert f"put of {data} to /tmp/data.bin over {channel.name} arrived corrupted" in message
    assert "sha256 here" in message and "on the board" in message


def test_without_ssh_the_board_falls_back_to_http(qemu: QemuBoard, tmp_path: Path) -> None:
    for files in started(files_on(qemu, tmp_path)):
        assert files.channel == "http"
        assert files.fallbacks == ["ssh: no ssh device (set ssh: <device>)"]


def test_without_ssh_or_network_the_board_falls_back_to_the_console(images: Images, tmp_path: Path) -> None:
    offline = board(
        images,
        tmp_path / "board",
        network="none",
        append="console=ttyS0 quiet loglevel=3 panic=-1 jumpstarter.nossh",
    )
    offline.start()
    try:
        for files in started(files_on(offline, tmp_path / "files")):
            assert files.channel == "console"
            assert files.fallbacks[0].startswith("ssh: ")
            assert files.fallbacks[1].startswith("http: the board's wget could not reach 10.0.2.2")
            data = tmp_path / "small.bin"
            data.write_bytes(os.urandom(100_000))
            assert files.put(data, "/tmp/small.bin").channel == "console"
    finally:
        offline.stop()
