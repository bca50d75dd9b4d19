"""Probe behind the ssh README table: OpenSSH vs paramiko vs asyncssh on a running demo board.

    .venv/bin/pip install paramiko asyncssh; cd DIR_WITH_port_k_big; python bench/ssh_clients.py
Expects files "port" (the forwarded SSH port), "k" (an authorized private key) and "big" (64 MiB).
"""

# ruff: noqa
import asyncio, time, subprocess, statistics, os

port = int(open("port").read())
KEY = "k"


def med(xs):
    return statistics.median(xs)


def t(f, n):
    xs = []
    for _ in range(n):
        s = time.perf_counter()
        f()
        xs.append(time.perf_counter() - s)
    return xs


res = {}
# OpenSSH
base = [
    "ssh",
    "-i",
    KEY,
    "-p",
    str(port),
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
]
res["openssh connect+true"] = med(t(lambda: subprocess.run(base + ["root@127.0.0.1", "true"], check=True), 5))
cm = ["-o", "ControlMaster=auto", "-o", "ControlPath=/tmp/ssh-probe/boot/cm", "-o", "ControlPersist=30"]
subprocess.run(base + cm + ["root@127.0.0.1", "true"], check=True)
res["openssh mux true"] = med(
    t(lambda: subprocess.run(base + cm + ["root@127.0.0.1", "true"], check=True), 10)
)
subprocess.run(base + cm + ["-O", "exit", "root@127.0.0.1"], capture_output=True)
scp = [
    "scp",
    "-q",
    "-i",
    KEY,
    "-P",
    str(port),
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
]
res["scp put 64M s"] = med(t(lambda: subprocess.run(scp + ["big", "root@127.0.0.1:/tmp/big"], check=True), 2))
res["scp get 64M s"] = med(
    t(lambda: subprocess.run(scp + ["root@127.0.0.1:/tmp/big", "/tmp/ssh-probe/boot/back"], check=True), 2)
)
# paramiko
import paramiko

pk = paramiko.Ed25519Key.from_private_key_file(KEY)


def pconn():
    c = paramiko.SSHClient()
    c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    c.connect("127.0.0.1", port, "root", pkey=pk, look_for_keys=False, allow_agent=False)
    return c


res["paramiko connect"] = med(t(lambda: pconn().close(), 5))
c = pconn()


def prun():
    _, o, e = c.exec_command("true")
    o.read()
    o.channel.recv_exit_status()


res["paramiko true"] = med(t(prun, 10))
s = c.open_sftp()
res["paramiko sftp put 64M s"] = med(t(lambda: s.put("big", "/tmp/big"), 1))
res["paramiko sftp get 64M s"] = med(t(lambda: s.get("/tmp/big", "back"), 1))


def pcat():
    i, o, e = c.exec_command("cat > /tmp/big2")
    with open("big", "rb") as f:
        while b := f.read(1 << 20):
            i.write(b)
    i.channel.shutdown_write()
    o.channel.recv_exit_status()


res["paramiko exec cat put 64M s"] = med(t(pcat, 1))
c.close()
# asyncssh
import asyncssh


async def am():
    opts = dict(
        port=port, username="root", client_keys=[KEY], known_hosts=None, server_host_key_algs=["ssh-ed25519"]
    )
    xs = []
    for _ in range(5):
        s = time.perf_counter()
        conn = await asyncssh.connect("127.0.0.1", **opts)
        xs.append(time.perf_counter() - s)
        conn.close()
        await conn.wait_closed()
    res["asyncssh connect"] = med(xs)
    conn = await asyncssh.connect("127.0.0.1", **opts)
    xs = []
    for _ in range(10):
        s = time.perf_counter()
        await conn.run("true")
        xs.append(time.perf_counter() - s)
    res["asyncssh true"] = med(xs)
    async with conn.start_sftp_client() as sftp:
        s = time.perf_counter()
        await sftp.put("big", "/tmp/big")
        res["asyncssh sftp put 64M s"] = time.perf_counter() - s
        s = time.perf_counter()
        await sftp.get("/tmp/big", "back")
        res["asyncssh sftp get 64M s"] = time.perf_counter() - s
    s = time.perf_counter()
    await conn.run("cat > /tmp/big2", stdin="big", encoding=None)
    res["asyncssh exec cat put 64M s"] = time.perf_counter() - s
    conn.close()


try:
    asyncio.run(am())
except Exception as e:
    print("asyncssh failed", e)
for k, v in res.items():
    print(f"{k:32s} {v * 1000:8.1f} ms" if "64M" not in k else f"{k:32s} {v:6.2f} s = {64 / v:5.1f} MiB/s")
