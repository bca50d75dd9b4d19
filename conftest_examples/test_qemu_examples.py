"""Example hardware-in-the-loop tests against the QEMU demo boards.

    pytest conftest_examples --target=conftest_examples/qemu-x86_64.yaml
    pytest conftest_examples --target=conftest_examples/qemu-arm64-uboot.yaml

Each test asks for the board by its role (``qemu_vm``); ``@pytest.mark.device(...)`` picks the tests
that fit the target's labels, so one file serves both boards.
"""

from __future__ import annotations

import socket
import urllib.request
import zlib

import pytest

linux = pytest.mark.device(os="linux")
uboot = pytest.mark.device(os="uboot")


def boot_id(qemu_vm):
    return qemu_vm.console.run("cat /proc/sys/kernel/random/boot_id").check().output


@linux
def test_boots_to_a_shell(qemu_vm):
    result = qemu_vm.console.run("uname -sm")
    assert result.ok
    assert result.output == "Linux x86_64"


@linux
def test_exit_status_of_a_failing_command(qemu_vm):
    assert qemu_vm.console.run("ls /no/such/file").status != 0


@pytest.mark.device(os="linux", control="qmp")  # QMP is the local QEMU board's; a Jumpstarter board has none
def test_qmp_says_the_guest_runs(qemu_vm):
    assert qemu_vm.execute("query-status")["status"] == "running"


@linux
def test_guest_serves_its_own_page(qemu_vm):
    page = qemu_vm.console.run("wget -q -O - http://localhost/").check().output
    assert "pytest-jumpstarter demo board" in page


@linux
def test_host_reaches_the_guest_web_server(qemu_vm):
    with urllib.request.urlopen(f"http://127.0.0.1:{qemu_vm.forward('http')}/", timeout=10) as response:
        assert b"demo board" in response.read()


@linux
def test_guest_echo_service(qemu_vm):
    with socket.create_connection(("127.0.0.1", qemu_vm.forward("echo")), timeout=10) as sock:
        sock.sendall(b"hello\n")
        assert sock.recv(64) == b"hello\n"


@linux
def test_power_cycle_really_reboots(qemu_vm):
    before = boot_id(qemu_vm)
    qemu_vm.cycle()
    assert boot_id(qemu_vm) != before


@linux
def test_reset_really_reboots(qemu_vm):
    before = boot_id(qemu_vm)
    qemu_vm.reset()
    assert boot_id(qemu_vm) != before


@uboot
def test_uboot_prompt_and_version(qemu_vm):
    assert qemu_vm.console.run("version").check().output.startswith("U-Boot")


@uboot
def test_uboot_loads_a_file_over_tftp(qemu_vm):
    data = b"jumpstarter" * 1000
    (qemu_vm.tftp_root / "blob.bin").write_bytes(data)
    qemu_vm.console.run(
        "setenv ipaddr 10.0.2.15; setenv serverip 10.0.2.2; tftpboot 0x40400000 blob.bin"
    ).check()
    crc = qemu_vm.console.run("crc32 0x40400000 ${filesize}").check().output
    assert f"==> {zlib.crc32(data):08x}" in crc


@uboot
def test_uboot_writes_the_virtio_disk(qemu_vm):
    qemu_vm.console.run("mw.b 0x40800000 0xa5 0x200; virtio scan; virtio write 0x40800000 0 1").check()
    assert qemu_vm.disk_path("flash").read_bytes()[:512] == b"\xa5" * 512
