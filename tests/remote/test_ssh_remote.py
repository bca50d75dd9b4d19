"""The ssh and files drivers on a board of a Jumpstarter lab: SSH through the exporter's port-forward."""

from __future__ import annotations

import pytest
from exporter_support import BOOTDISK
from test_standalone import board_yaml

pytestmark = pytest.mark.qemu


def test_ssh_and_verified_files_through_the_exporters_port_forward(pytester, demo_exporter):
    host_key = BOOTDISK.parent / "ssh_host_ed25519_key.pub"
    if not host_key.exists():
        pytest.fail(f"{host_key} is missing: the demo images predate SSH (run scripts/build-images)")
    board = board_yaml(demo_exporter.listen).replace(
        "network: {http: qemu.http, echo: qemu.echo}", "network: {http: qemu.http, ssh: qemu.ssh}"
    )
    pytester.makefile(
        ".yaml",
        board=board
        + "  ssh:\n    driver: ssh\n    board: board\n"
        + f"    host_key: {host_key}\n"
        + "  files:\n    driver: files\n    board: board\n    ssh: ssh\n",
    )
    pytester.makepyfile(
        """
        import os

        def test_over_ssh(ssh, files, tmp_path):
            result = ssh.run("echo out; echo err >&2; exit 3")
            assert (result.stdout, result.stderr, result.status) == ("out", "err", 3)
            # The address is the exporter's port-forward on this host, not the board's own.
            host, port = ssh.address.rsplit(":", 1)
            assert host == "127.0.0.1"
            data = os.urandom(1024 * 1024)
            (tmp_path / "blob").write_bytes(data)
            sent = files.put(tmp_path / "blob", "/tmp/blob")
            assert sent.channel == "ssh" and sent.size == len(data)
            back = files.get("/tmp/blob", tmp_path / "back")
            assert (tmp_path / "back").read_bytes() == data and back.sha256 == sent.sha256
        """
    )
    result = pytester.runpytest(
        "--target=board.yaml", "-p", "no:cacheprovider", f"--jumpstarter-lock-dir={pytester.path}"
    )
    result.assert_outcomes(passed=1)
