"""``--jumpstarter-list`` for a ``jumpstarter`` board: where it is served from, and its driver tree.

Nothing here powers or leases anything:

- ``exporter:``: the exporter is asked for its driver tree (``GetReport``, what every client does on
  connect), after a TCP probe; an exporter that does not answer is listed as such, and then the
  client stack is not even imported;
- ``client:`` + ``selector:``: the controller is asked which exporters match (``ListExporters``); the
  tree of a controller's exporter is served only under a lease, and a listing takes none;
- ``exporter_config:``: the tree as the file declares it (running it could start drivers).

Every configured path is marked in the tree; one the tree lacks is said so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_jumpstarter.errors import JumpstarterError

#: How long a listing waits for an exporter or a controller (a lab of many boards is listed in turn).
LIST_TIMEOUT = 5.0


def describe(device: str, settings: Any) -> list[str]:
    """The listing's lines for a ``jumpstarter`` device with ``settings`` (a JumpstarterSettings)."""
    try:
        if settings.exporter:
            return _exporter(device, settings)
        if settings.client:
            return _controller(device, settings)
        return _exporter_config(settings)
    except JumpstarterError as exc:
        return [f"driver tree: not read ({_plain(device, exc)})"]
    except Exception as exc:  # a listing lists on: one board it cannot describe says why
        return [f"driver tree: not read ({type(exc).__name__}: {_plain(device, exc)})"]


def _plain(device: str, exc: BaseException) -> str:
    return str(exc).removeprefix(f"device {device!r}: ").splitlines()[0]


def _wanted(settings: Any) -> dict[str, str]:
    """``{path: the setting naming it}`` for every path the device uses."""
    wanted = {
        path: key
        for key, path in (
            ("power", settings.power),
            ("console", settings.console),
            ("flasher", settings.flasher),
        )
        if path
    }
    wanted.update({str(path): f"network.{name}" for name, path in settings.network.items()})
    return wanted


def tree_lines(paths: Mapping[str, str], wanted: Mapping[str, str], declared: bool = False) -> list[str]:
    """``{path: kind}`` as an indented tree; the paths ``wanted`` names are marked, missing ones said.

    ``declared``: the tree is a config's, where a driver adds its own children when it runs.
    """
    lines = []
    for path in sorted(paths):
        mark = f"  <- {wanted[path]}" if path in wanted else ""
        lines.append(f"  {'  ' * path.count('.')}{path} ({paths[path]}){mark}")
    for path, key in wanted.items():
        parent = path.rpartition(".")[0]
        if path in paths:
            continue
        if declared and parent in paths:
            lines.append(f"  {key}: {path!r} is not declared (a child {paths[parent]} may add when it runs)")
        else:
            lines.append(f"  {key}: {path!r} is NOT in this tree")
    return lines


def _exporter(device: str, settings: Any) -> list[str]:
    from .session import ExporterUnreachable, probe_tcp

    address = settings.exporter
    try:
        probe_tcp(device, address, 2.0)
    except ExporterUnreachable as exc:
        return [f"exporter {address}: not reachable, driver tree not read ({_plain(device, exc)})"]
    from .driver import _b64
    from .session import Session, client_kind

    session = Session(device)
    try:
        tls_ca = settings.tls_ca.read_bytes() if settings.tls_ca else None
        session.connect_tcp(
            address,
            insecure=settings.insecure,
            tls_ca=_b64(tls_ca) if tls_ca else None,
            passphrase=settings.passphrase,
            timeout=min(settings.connect_timeout, LIST_TIMEOUT),
        )
        paths = {path: client_kind(client) for path, client in session.paths.items()}
    finally:
        session.close()
    head = f"exporter {address}: driver tree (read from the exporter; nothing powered):"
    return [head, *tree_lines(paths, _wanted(settings))]


def _controller(device: str, settings: Any) -> list[str]:
    client = Path(settings.client)
    if not client.is_file():
        return [f"lease: client config {client} not found, controller not asked"]
    from jumpstarter.client.grpc import ClientService
    from jumpstarter.config.client import ClientConfigV1Alpha1

    from .session import ExporterUnreachable, Session, probe_tcp

    config = ClientConfigV1Alpha1.from_file(client)
    selector = dict(settings.selector)
    shown = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    head = f"lease: none taken by a listing (selector {shown}, controller {config.endpoint})"
    note = "driver tree: served only under a lease, not read"
    try:
        probe_tcp(device, config.endpoint, 2.0, what="controller")
    except ExporterUnreachable as exc:
        return [head, f"controller not reachable ({_plain(device, exc)})", note]
    session = Session(device)
    try:
        channel = session.open_channel(
            config.channel, timeout=LIST_TIMEOUT, what="connecting to the controller"
        )
        service = ClientService(channel=channel, namespace=config.metadata.namespace)

        async def exporters() -> Any:
            return await service.ListExporters(filter=shown)

        found = session.call(exporters, timeout=LIST_TIMEOUT, what="ListExporters").exporters
    finally:
        session.close()
    # Matched here too: a controller may ignore the filter.
    matching = [e for e in found if all(e.labels.get(k) == v for k, v in selector.items())]
    lines = [head, f"exporters matching ({len(matching)} of {len(found)}):"]
    lines += [f"  {e.name} {dict(e.labels)} {'online' if e.online else 'offline'}" for e in matching]
    return [*lines, note]


def _exporter_config(settings: Any) -> list[str]:
    import yaml

    path = Path(settings.exporter_config)
    with contextlib.suppress(ValueError):
        path = path.relative_to(Path.cwd())
    doc = yaml.safe_load(path.read_text())
    export = doc.get("export") if isinstance(doc, dict) else None
    if not isinstance(export, dict):
        return [f"exporter config {path}: no export: mapping, driver tree not read"]
    paths = dict(_declared(export, ""))
    head = (
        f"exporter config {path}: driver tree as declared (not run by a listing; drivers may add children):"
    )
    return [head, *tree_lines(paths, _wanted(settings), declared=True)]


def _declared(export: Mapping[str, Any], prefix: str) -> Iterable[tuple[str, str]]:
    for name, entry in export.items():
        path = f"{prefix}{name}"
        entry = entry if isinstance(entry, dict) else {}
        kind = entry.get("type") or (f"ref {entry['ref']}" if "ref" in entry else "?")
        yield path, str(kind).rsplit(".", 1)[-1]
        children = entry.get("children")
        if isinstance(children, dict):
            yield from _declared(children, f"{path}.")
