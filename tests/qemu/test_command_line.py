"""The QEMU command line and settings view, without QEMU: pure functions of settings and per-run files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.cmdline import DiskFile, RunFiles, command_line, socket_args
from pytest_jumpstarter_qemu.config import QemuSettings
from pytest_jumpstarter_qemu.network import HostForward, UserNetwork, match_forwards, parse_usernet

from pytest_jumpstarter.settings import SettingValueError


def config(**settings: Any) -> QemuSettings:
    settings.setdefault("kernel", "/k/vmlinuz")
    return QemuBoard.settings_from(settings, Path("/targets"))


def arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


RUN = RunFiles(name="t/qemu_vm")


def test_x86_defaults_boot_the_kernel_paused_on_tcg_with_a_small_translation_cache() -> None:
    cmd = command_line(config(), RUN)
    assert cmd[0] == "qemu-system-x86_64"
    assert "-S" in cmd and "-nodefaults" in cmd
    assert arg(cmd, "-name") == "t/qemu_vm"
    assert arg(cmd, "-machine") == "q35"
    assert arg(cmd, "-accel") == "tcg,tb-size=32"
    assert arg(cmd, "-cpu") == "max"
    assert arg(cmd, "-m") == "256M"
    assert arg(cmd, "-kernel") == "/k/vmlinuz"
    assert arg(cmd, "-append") == "console=ttyS0,115200 quiet loglevel=3 panic=-1"
    assert arg(cmd, "-netdev") == "user,id=net0"
    assert arg(cmd, "-device") == "virtio-net-pci,netdev=net0"


def test_kvm_uses_the_host_cpu_unless_one_is_set() -> None:
    assert arg(command_line(config(), RUN, "kvm"), "-cpu") == "host"
    assert arg(command_line(config(), RUN, "kvm"), "-accel") == "kvm"
    assert arg(command_line(config(cpu="qemu64"), RUN, "kvm"), "-cpu") == "qemu64"


def test_arm_gets_its_machine_console_and_device_bus() -> None:
    cmd = command_line(config(arch="aarch64"), RUN)
    assert cmd[0] == "qemu-system-aarch64"
    assert (arg(cmd, "-machine"), arg(cmd, "-cpu")) == ("virt", "cortex-a57")
    assert arg(cmd, "-append").startswith("console=ttyAMA0,115200")
    assert arg(cmd, "-device") == "virtio-net-device,netdev=net0"


def test_network_none_has_no_nic_and_forwards_ask_for_port_zero() -> None:
    assert "-netdev" not in command_line(config(network="none"), RUN)
    cmd = command_line(config(network={"forwards": {"ssh": 22, "http": 80}, "tftp": True}), RunFiles(
        name="t/q", tftp_root=Path("/w/tftp")
    ))  # fmt: skip
    assert arg(cmd, "-netdev") == (
        "user,id=net0,tftp=/w/tftp,hostfwd=tcp:127.0.0.1:0-:22,hostfwd=tcp:127.0.0.1:0-:80"
    )


def test_state_drive_comes_before_the_disks_and_disks_use_their_per_run_files() -> None:
    run = RunFiles(
        name="t/q",
        state_drive=Path("/w/vmstate.qcow2"),
        disks=[
            DiskFile("disk0", "qcow2", Path("/w/disk-disk0.qcow2")),
            DiskFile("d", "raw", Path("/w/d.raw")),
        ],
    )
    cmd = command_line(config(), run)
    drives = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]
    assert drives == [
        "if=none,id=jumpstarter-state,format=qcow2,cache=unsafe,file=/w/vmstate.qcow2",
        "if=none,id=disk-disk0,format=qcow2,file=/w/disk-disk0.qcow2",
        "if=none,id=disk-d,format=raw,file=/w/d.raw",
    ]
    assert "virtio-blk-pci,drive=disk-d" in cmd


def test_extra_args_come_last_and_bios_dtb_initrd_are_passed() -> None:
    cmd = command_line(
        config(initrd="/k/initrd", dtb="/k/x.dtb", bios="/fw", extra_args=["-rtc", "base=utc"]),
        RUN,
    )
    assert cmd[-2:] == ["-rtc", "base=utc"]
    assert (arg(cmd, "-initrd"), arg(cmd, "-dtb"), arg(cmd, "-bios")) == ("/k/initrd", "/k/x.dtb", "/fw")


def test_socket_args_connect_serial_and_qmp_to_our_listeners() -> None:
    assert socket_args(Path("/s/c.sock"), Path("/s/q.sock")) == [
        "-chardev", "socket,id=console0,path=/s/c.sock", "-serial", "chardev:console0", "-qmp", "unix:/s/q.sock",
    ]  # fmt: skip


def test_the_command_line_is_a_pure_function() -> None:
    c = config(network={"forwards": {"web": 80}})
    assert command_line(c, RUN) == command_line(c, RUN)


def test_network_settings_become_a_typed_user_network() -> None:
    assert config().user_network == UserNetwork()
    assert config(network=None).user_network == UserNetwork()
    assert config(network="none").user_network is None
    net = config(network={"forwards": {"ssh": "22"}, "tftp": "yes", "address": "10.0.3.2"}).user_network
    assert net == UserNetwork(forwards={"ssh": 22}, tftp=True, address="10.0.3.2")
    with pytest.raises(SettingValueError, match="1-65535") as caught:
        config(network={"forwards": {"x": 0}})
    assert caught.value.path == ("network", "forwards", "x")


def test_disk_short_forms_become_typed_disks() -> None:
    listed = config(disks=["a.qcow2", "b.img"]).disk_list()
    assert [(d.name, d.base, d.base_format) for d in listed.values()] == [
        ("disk0", Path("/targets/a.qcow2"), "qcow2"),
        ("disk1", Path("/targets/b.img"), "raw"),
    ]
    assert config(disks="a.img, b.img").disks.keys() == {"disk0", "disk1"}  # ini
    named = config(disks={"scratch": "4M", "root": {"file": "r.img", "format": "qcow2"}}).disk_list()
    assert (named["scratch"].base, named["scratch"].size) == (None, 4 * 1024 * 1024)
    assert (named["root"].base, named["root"].base_format) == (Path("/targets/r.img"), "qcow2")
    with pytest.raises(SettingValueError, match="give a file or a size") as caught:
        config(disks={"a": {"format": "raw"}})
    assert caught.value.path == ("disks", "a")


def test_info_usernet_forwards_are_read_back_and_paired_by_guest_port() -> None:
    text = (
        "Hub -1 (net0):\r\n"
        "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
        "  TCP[HOST_FORWARD]  14       127.0.0.1 38987       10.0.2.15    80     0     0\r\n"
        "  TCP[HOST_FORWARD]  13       127.0.0.1 40001       10.0.2.15    22     0     0\r\n"
        "  UDP[HOST_FORWARD]  12       127.0.0.1 40002       10.0.2.15    22     0     0\r\n"
    )
    found = parse_usernet(text)
    assert found[0] == HostForward("tcp", "127.0.0.1", 38987, 80)
    assert match_forwards({"ssh": 22, "web": 80, "gone": 9}, found) == {"ssh": 40001, "web": 38987}
