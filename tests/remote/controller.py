"""A stand-in for the Jumpstarter controller and router, for the lease tests.

The real controller is Go on Kubernetes and cannot run here.  This one implements the same gRPC
services from jumpstarter-protocol's generated servicers (ClientService, ControllerService,
RouterService), with TLS from its own CA and bearer tokens shaped like JWTs, so that the stock
exporter (``jmp run`` in controller mode) and the stock client library work against it unmodified.

Leases: a selector is matched against the registered exporters' labels; a lease is granted when a
matching exporter is free, waits (Pending, saying who holds the exporter) while all are busy, and
is Unsatisfiable when nothing matches.  Leases end by expiry, DeleteLease, or :meth:`revoke`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from jumpstarter_protocol import (
    client_pb2,
    client_pb2_grpc,
    jumpstarter_pb2,
    jumpstarter_pb2_grpc,
    kubernetes_pb2,
    router_pb2,
    router_pb2_grpc,
)

NS = "default"


def make_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (openssl), returned as (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    quiet = {"check": True, "capture_output": True}
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ],
        **quiet,
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            "/CN=127.0.0.1",
        ],
        **quiet,
    )
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-days",
            "2",
            "-extfile",
            str(ext),
        ],
        **quiet,
    )
    return ca, cert, key


def jwt_for(subject: str) -> str:
    """A JWT-shaped token (``jmp`` decodes it without verifying); the signature is random."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"sub": subject, "iss": "controller-stand-in", "exp": int(time.time()) + 86400}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{secrets.token_urlsafe(16)}"


def _ts(when: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt.datetime.fromtimestamp(when, dt.timezone.utc))
    return ts


def _selector(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


@dataclass
class ExporterRec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    online: bool = False
    status: asyncio.Queue[jumpstarter_pb2.StatusResponse] = field(default_factory=asyncio.Queue)
    listen: dict[str, asyncio.Queue[jumpstarter_pb2.ListenResponse]] = field(default_factory=dict)


@dataclass
class LeaseRec:
    name: str
    selector: str
    client: str
    duration: float
    created: float
    exporter: str | None = None
    begin: float | None = None
    ended: float | None = None
    reason: str = ""
    message: str = ""
    tokens: set[str] = field(default_factory=set)

    @property
    def end(self) -> float | None:
        return self.ended if self.ended is not None else (self.begin + self.duration if self.begin else None)


class Controller:
    """The controller + router stand-in: ``start()`` it, hand out ``client_config()``/``exporter_config()``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca, self.cert, self.key = make_ca(folder)
        self.tokens: dict[str, tuple[str, str]] = {}  # token -> (kind, name)
        self.exporters: dict[str, ExporterRec] = {}
        self.leases: dict[str, LeaseRec] = {}
        self.log: list[str] = []
        self.calls: list[str] = []
        self._pairs: dict[str, dict[str, Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="controller-stand-in"
        )
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def token(self, kind: str, name: str) -> str:
        token = jwt_for(f"{kind}:{name}")
        self.tokens[token] = (kind, name)
        return token

    def client_config(self, path: Path, name: str) -> Path:
        import yaml

        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "jumpstarter.dev/v1alpha1",
                    "kind": "ClientConfig",
                    "metadata": {"namespace": NS, "name": name},
                    "endpoint": self.address,
                    "tls": {"ca": base64.b64encode(self.ca.read_bytes()).decode(), "insecure": False},
                    "token": self.token("Client", name),
                    "drivers": {"allow": [], "unsafe": True},
                }
            )
        )
        return path

    def exporter_endpoint(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        """The controller-mode part of an ExporterConfig for exporter ``name``."""
        self.exporters.setdefault(name, ExporterRec(name)).labels = dict(
            labels
        )  # labels live in the controller
        return {
            "endpoint": self.address,
            "token": self.token("Exporter", name),
            "tls": {"ca": base64.b64encode(self.ca.read_bytes()).decode(), "insecure": False},
            "metadata": {"namespace": NS, "name": name},
        }

    # --- running --------------------------------------------------------------------------------

    def start(self) -> Controller:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(30)
        return self

    async def _serve(self) -> None:
        self._server = grpc.aio.server()
        client_pb2_grpc.add_ClientServiceServicer_to_server(_Client(self), self._server)
        jumpstarter_pb2_grpc.add_ControllerServiceServicer_to_server(_Ctrl(self), self._server)
        router_pb2_grpc.add_RouterServiceServicer_to_server(_Router(self), self._server)
        creds = grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())])
        self.port = self._server.add_secure_port("127.0.0.1:0", creds)
        await self._server.start()
        self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            self._schedule()
            await asyncio.sleep(0.1)  # the controller's reconcile period

    def stop(self) -> None:
        """Stop serving (a controller that goes away); calling it again does nothing."""
        if not self._loop.is_running():
            return

        async def down() -> None:
            self._ticker.cancel()
            if self._server is not None:
                await self._server.stop(0.5)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def run(self, func: Any) -> Any:
        """Call ``func()`` on the controller's loop (test-side actions such as :meth:`revoke`)."""

        async def call() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    # --- lease logic (runs on the loop) ---------------------------------------------------------

    def holder_of(self, exporter: str) -> LeaseRec | None:
        return next(
            (le for le in self.leases.values() if le.exporter == exporter and le.ended is None and le.begin),
            None,
        )

    def _matching(self, selector: str) -> list[ExporterRec]:
        wanted = _selector(selector)
        return [
            e
            for e in self.exporters.values()
            if e.online and all(e.labels.get(k) == v for k, v in wanted.items())
        ]

    def _schedule(self) -> None:
        now = time.time()
        for lease in self.leases.values():
            if lease.begin and lease.ended is None and lease.end is not None and now >= lease.end:
                self.finish(lease.name, "Expired", "the lease's duration is over")
        for lease in sorted(self.leases.values(), key=lambda le: le.created):
            if lease.begin or lease.ended is not None:
                continue
            matching = self._matching(lease.selector)
            free = [e for e in matching if self.holder_of(e.name) is None]
            if free:
                exporter = free[0]
                lease.exporter, lease.begin = exporter.name, now
                exporter.status.put_nowait(
                    jumpstarter_pb2.StatusResponse(
                        leased=True, lease_name=lease.name, client_name=lease.client
                    )
                )
                self.log.append(f"granted {lease.name} on {exporter.name}")
            elif matching:
                held = [(e.name, self.holder_of(e.name)) for e in matching]
                lease.message = "; ".join(
                    f"exporter {n} is held by lease {h.name} of client {h.client}"
                    for n, h in held
                    if h is not None
                )

    def finish(self, name: str, reason: str, message: str) -> None:
        lease = self.leases.get(name)
        if lease is None or lease.ended is not None:
            return
        lease.ended, lease.reason, lease.message = time.time(), reason, message
        self.log.append(f"ended {name}: {reason}")
        if lease.exporter and lease.begin:
            self.exporters[lease.exporter].status.put_nowait(jumpstarter_pb2.StatusResponse(leased=False))
            self.exporters[lease.exporter].listen.pop(name, None)
        for token in lease.tokens:
            pair = self._pairs.get(token)
            if pair:
                pair["done"].set()

    def revoke(self, name: str) -> None:
        self.run(lambda: self.finish(name, "Revoked", "revoked by the lab's administrator"))

    def proto(self, lease: LeaseRec) -> client_pb2.Lease:
        now = time.time()
        conds: list[kubernetes_pb2.Condition] = []
        if lease.ended is not None:
            conds.append(
                kubernetes_pb2.Condition(
                    type="Ready", status="False", reason=lease.reason, message=lease.message
                )
            )
        elif lease.begin:
            conds.append(kubernetes_pb2.Condition(type="Ready", status="True", reason="Ready"))
        elif not self._matching(lease.selector):
            offered = (
                "; ".join(f"{e.name} {e.labels}" for e in self.exporters.values() if e.online)
                or "no exporters"
            )
            conds.append(
                kubernetes_pb2.Condition(
                    type="Unsatisfiable",
                    status="True",
                    reason="NoMatch",
                    message=f"no exporter matches {lease.selector!r}; online: {offered}",
                )
            )
        else:
            conds.append(
                kubernetes_pb2.Condition(type="Pending", status="True", reason="Busy", message=lease.message)
            )
        d = duration_pb2.Duration()
        d.FromTimedelta(dt.timedelta(seconds=lease.duration))
        msg = client_pb2.Lease(
            name=f"namespaces/{NS}/leases/{lease.name}",
            selector=lease.selector,
            duration=d,
            client=f"namespaces/{NS}/clients/{lease.client}",
            conditions=conds,
        )
        if lease.exporter:
            msg.exporter = f"namespaces/{NS}/exporters/{lease.exporter}"
        if lease.begin:
            msg.effective_begin_time.CopyFrom(_ts(lease.begin))
        if lease.ended is not None:
            msg.effective_end_time.CopyFrom(_ts(lease.ended))
        del now
        return msg

    def who(self, context: grpc.aio.ServicerContext) -> tuple[str, str]:
        meta = dict(context.invocation_metadata() or ())
        token = str(meta.get("authorization", "")).removeprefix("Bearer ")
        if token not in self.tokens:
            raise PermissionError("unknown token")
        return self.tokens[token]


def _name(identifier: str) -> str:
    return identifier.rsplit("/", 1)[-1]


class _Client(client_pb2_grpc.ClientServiceServicer):  # type: ignore[misc]
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl

    async def _auth(self, context: Any, method: str) -> str:
        try:
            _kind, name = self.ctl.who(context)
        except PermissionError:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        self.ctl.calls.append(f"{name}:{method}")
        return name

    def _exporter(self, e: ExporterRec) -> client_pb2.Exporter:
        return client_pb2.Exporter(
            name=f"namespaces/{NS}/exporters/{e.name}", labels=e.labels, online=e.online
        )

    async def GetExporter(self, request: Any, context: Any) -> Any:
        await self._auth(context, "GetExporter")
        e = self.ctl.exporters.get(_name(request.name))
        if e is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no exporter {request.name}")
        return self._exporter(e)

    async def ListExporters(self, request: Any, context: Any) -> Any:
        await self._auth(context, "ListExporters")
        return client_pb2.ListExportersResponse(
            exporters=[self._exporter(e) for e in self.ctl.exporters.values()]
        )

    async def CreateLease(self, request: Any, context: Any) -> Any:
        client = await self._auth(context, "CreateLease")
        name = request.lease_id or f"lease-{secrets.token_hex(4)}"
        self.ctl.leases[name] = LeaseRec(
            name,
            request.lease.selector,
            client,
            request.lease.duration.ToTimedelta().total_seconds(),
            time.time(),
        )
        self.ctl._schedule()
        return self.ctl.proto(self.ctl.leases[name])

    async def _lease(self, request_name: str, context: Any) -> LeaseRec:
        lease = self.ctl.leases.get(_name(request_name))
        if lease is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no lease {request_name}")
        return lease

    async def GetLease(self, request: Any, context: Any) -> Any:
        await self._auth(context, "GetLease")
        return self.ctl.proto(await self._lease(request.name, context))

    async def ListLeases(self, request: Any, context: Any) -> Any:
        await self._auth(context, "ListLeases")
        return client_pb2.ListLeasesResponse(leases=[self.ctl.proto(le) for le in self.ctl.leases.values()])

    async def UpdateLease(self, request: Any, context: Any) -> Any:
        await self._auth(context, "UpdateLease")
        lease = await self._lease(request.lease.name, context)
        if lease.ended is None and "duration" in request.update_mask.paths:
            lease.duration = request.lease.duration.ToTimedelta().total_seconds()
        return self.ctl.proto(lease)

    async def DeleteLease(self, request: Any, context: Any) -> Any:
        await self._auth(context, "DeleteLease")
        self.ctl.finish(_name(request.name), "Released", "released by its client")
        from google.protobuf import empty_pb2

        return empty_pb2.Empty()


class _Ctrl(jumpstarter_pb2_grpc.ControllerServiceServicer):  # type: ignore[misc]
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl

    def _exporter(self, context: Any) -> ExporterRec:
        _kind, name = self.ctl.who(context)
        return self.ctl.exporters.setdefault(name, ExporterRec(name))

    async def Register(self, request: Any, context: Any) -> Any:
        e = self._exporter(context)
        e.labels, e.online = {**e.labels, **dict(request.labels)}, True
        self.ctl.log.append(f"registered {e.name} {e.labels}")
        return jumpstarter_pb2.RegisterResponse(uuid=secrets.token_hex(8))

    async def Unregister(self, request: Any, context: Any) -> Any:
        self._exporter(context).online = False
        return jumpstarter_pb2.UnregisterResponse()

    async def ReportStatus(self, request: Any, context: Any) -> Any:
        return jumpstarter_pb2.ReportStatusResponse()

    async def ReleaseLease(self, request: Any, context: Any) -> Any:
        self.ctl.finish(_name(request.name), "Released", "released by the exporter")
        return jumpstarter_pb2.ReleaseLeaseResponse()

    async def Status(self, request: Any, context: Any) -> AsyncIterator[Any]:
        e = self._exporter(context)
        holder = self.ctl.holder_of(e.name)
        yield jumpstarter_pb2.StatusResponse(
            leased=holder is not None, lease_name=holder.name if holder else ""
        )
        while True:
            yield await e.status.get()

    async def Listen(self, request: Any, context: Any) -> AsyncIterator[Any]:
        e = self._exporter(context)
        queue = e.listen.setdefault(request.lease_name, asyncio.Queue())
        while True:
            yield await queue.get()

    async def Dial(self, request: Any, context: Any) -> Any:
        _kind, client = self.ctl.who(context)
        lease = self.ctl.leases.get(request.lease_name)
        if lease is None or lease.ended is not None or not lease.begin or lease.client != client:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"lease {request.lease_name} is not yours or over"
            )
        e = self.ctl.exporters[lease.exporter or ""]
        token = secrets.token_urlsafe(16)
        self.ctl.tokens[token] = ("Router", lease.name)
        lease.tokens.add(token)
        e.listen.setdefault(lease.name, asyncio.Queue()).put_nowait(
            jumpstarter_pb2.ListenResponse(router_endpoint=self.ctl.address, router_token=token)
        )
        return jumpstarter_pb2.DialResponse(router_endpoint=self.ctl.address, router_token=token)


class _Router(router_pb2_grpc.RouterServiceServicer):  # type: ignore[misc]
    """Pairs the two streams that present the same router token and relays frames between them."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl

    async def Stream(self, request_iterator: Any, context: Any) -> Any:
        meta = dict(context.invocation_metadata() or ())
        token = str(meta.get("authorization", "")).removeprefix("Bearer ")
        pair = self.ctl._pairs.setdefault(
            token, {"sides": [], "both": asyncio.Event(), "done": asyncio.Event()}
        )
        pair["sides"].append(context)
        if len(pair["sides"]) == 2:
            pair["both"].set()
        await pair["both"].wait()
        peer = next(c for c in pair["sides"] if c is not context)

        async def pump() -> None:
            with contextlib.suppress(Exception):  # either side may go away mid-write
                async for req in request_iterator:
                    await peer.write(
                        router_pb2.StreamResponse(payload=req.payload, frame_type=req.frame_type)
                    )
            with contextlib.suppress(Exception):
                await peer.write(router_pb2.StreamResponse(frame_type=router_pb2.FRAME_TYPE_GOAWAY))

        task = asyncio.ensure_future(pump())
        done = asyncio.ensure_future(pair["done"].wait())
        await asyncio.wait([task, done], return_when=asyncio.FIRST_COMPLETED)
        if done.done():  # the lease ended: both sides are cut off at once
            task.cancel()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "lease ended")
        done.cancel()
        pair.setdefault("finished", 0)
        pair["finished"] += 1
        if pair["finished"] == 2:
            pair["done"].set()
        await pair["done"].wait()


#: What the lease tests' exporter serves: MockPower and a ``loop://`` serial console (no QEMU).
MOCK_EXPORT = {
    "power": {"type": "jumpstarter_driver_power.driver.MockPower"},
    "serial": {"type": "jumpstarter_driver_pyserial.driver.PySerial", "config": {"url": "loop://"}},
}


@contextlib.contextmanager
def running_lab() -> Iterator[tuple[Controller, Any, Path]]:
    """A stand-in controller with one exporter, ``bench-1`` ({board: mock}), registered with it.

    Both are stopped afterwards; the caller checks ``exporter.leftovers()``."""
    from exporter_support import Exporter, exporter_config, private_dir

    folder = private_dir("pytest-jumpstarter-lab-")
    ctl = Controller(folder).start()
    exporter = Exporter(
        exporter_config("bench-1", MOCK_EXPORT, **ctl.exporter_endpoint("bench-1", {"board": "mock"})), folder
    )
    try:
        exporter.start()
        deadline = time.monotonic() + 30
        while not ctl.exporters["bench-1"].online and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the exporter's Register
        yield ctl, exporter, folder
    finally:
        exporter.stop()
        ctl.stop()
        shutil.rmtree(folder, ignore_errors=True)
