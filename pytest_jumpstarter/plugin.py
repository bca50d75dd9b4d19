"""The pytest plugin: options, the ``device`` marker, per-target parametrization and the device fixtures.

Start-up stays cheap when no target is configured: driver packages and target files are only
loaded when ``--target``, ``JUMPSTARTER_TARGET``, ``jumpstarter_targets`` or ``--jumpstarter-list``
ask for them.  Everything a run knows lives in ``config.stash[RUN]``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from .cacheopts import cache_options

if TYPE_CHECKING:
    from .driver import Driver
    from .lifecycle import DeviceManager
    from .target import Redactor, TargetDescription
    from .target_fixture import Target

ENV_VAR = "JUMPSTARTER_TARGET"
INI_TARGETS = "jumpstarter_targets"  # the older ini key; jumpstarter_target is the option's name
TARGET_FIXTURE = "_jumpstarter_target"
#: Every device test uses this fixture (the device fixtures and ``target`` depend on it).
DEVICE_TEST = "jumpstarter_target"
HOW_TO_ENABLE = (
    "needs a target: pass --target=board.yaml, set JUMPSTARTER_TARGET=board.yaml, "
    "or list files under jumpstarter_targets in the ini file"
)


@dataclass(eq=False)
class Run:
    """What one pytest run (one xdist worker) knows: its targets, drivers and live devices."""

    targets: list[TargetDescription]
    drivers: Mapping[str, type[Driver[Any]]]
    redact: Redactor
    manager: DeviceManager | None = None
    sources: list[str] = field(default_factory=list)
    previous_handlers: dict[int, Any] = field(default_factory=dict)


RUN = pytest.StashKey[Run]()


# --- options, hooks, configuration ------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    from .options import add_options

    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    from .options import add_short_target

    add_short_target(early_config, parser, args)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    if _listing(config) and getattr(config.option, "dist", "no") != "no":
        # Listing happens where the tests are collected: in this process, not in xdist workers.
        config.option.dist = "no"
        config.option.numprocesses = None
        config.option.tx = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): tests of one group run on one xdist worker")
    config.addinivalue_line(
        "markers",
        "boot_stage(name): bring each device the test gets that has boot stages to stage `name` first",
    )
    config.addinivalue_line(
        "markers",
        "device(*roles, **labels): the test needs a target with these device roles and labels "
        '(a label may list acceptable values: arch=("x86_64", "aarch64")); it runs once per fitting target',
    )
    from .families import register_families
    from .options import TARGET_OWNER

    if TARGET_OWNER not in config.stash:
        config.pluginmanager.register(ShortTargetFixture(), "jumpstarter-target-fixture")
    # Always: the families define device fixtures, which must exist for a device test to skip.
    family_notes = register_families(config.pluginmanager)
    paths = _target_paths(config)
    if not paths and not _listing(config):
        return
    from .target import Redactor

    drivers, targets = _load_targets(config, paths, family_notes)
    redact = Redactor(v for t in targets for v in t.secret_values)
    run = Run(targets=targets, drivers=drivers, redact=redact, sources=[d for _, d in paths])
    config.stash[RUN] = run
    from .groups import GroupPlugin
    from .reporting import ReportPlugin
    from .timeouts import TimeoutPlugin

    config.pluginmanager.register(GroupPlugin(run), "jumpstarter-groups")
    config.pluginmanager.register(ReportPlugin(run, config), "jumpstarter-reports")
    config.pluginmanager.register(TimeoutPlugin(run), "jumpstarter-timeouts")
    if targets:
        _prepare_folders(config, targets)
    if targets and threading.current_thread() is threading.main_thread():
        # A CI cancel sends SIGTERM, a closed terminal or dropped ssh session SIGHUP: turn both into
        # the same orderly teardown as Ctrl-C (work folders and leases go too, not only processes).
        for signum in TEARDOWN_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # under nohup, SIGHUP stays ignored
                run.previous_handlers[signum] = signal.signal(signum, _signal_to_interrupt)


def _load_targets(
    config: pytest.Config, paths: list[tuple[Path, str]], notes: list[str]
) -> tuple[Mapping[str, type[Driver[Any]]], list[TargetDescription]]:
    from .errors import TargetError
    from .families import CONFTEST_NOTE, collect_drivers, has_unknown_driver, load_target_conftests
    from .target import load_targets

    drivers = collect_drivers(config.pluginmanager)
    files, displays = [p for p, _ in paths], [d for _, d in paths]
    if not paths:
        return drivers, []
    try:
        return drivers, load_targets(files, drivers, displays=displays, driver_notes=notes)
    except TargetError as exc:
        if not has_unknown_driver(exc):
            raise pytest.UsageError(str(exc)) from None
    # The driver may come from a conftest.py that pytest loads only when it collects that folder.
    if load_target_conftests(config, files):
        drivers = collect_drivers(config.pluginmanager)
    try:
        return drivers, load_targets(files, drivers, displays=displays, driver_notes=[*notes, CONFTEST_NOTE])
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from None


def _listing(config: pytest.Config) -> bool:
    from .options import value

    return bool(value(config, "jumpstarter_list"))


def _prepare_folders(config: pytest.Config, targets: list[TargetDescription]) -> None:
    """Sweep what dead runs left in the temp folders; a log or lock folder we cannot use is a usage error now,
    not an OSError in the middle of a test."""
    from .errors import FolderError
    from .workfiles import check_run_folders, sweep

    sweep()
    from .options import value

    logdir: str | None = value(config, "jumpstarter_logdir")
    exclusive = any(spec.exclusive for t in targets for spec in t.devices.values())
    try:
        check_run_folders(
            (config.invocation_params.dir / logdir).resolve() if logdir else None,
            _lock_dir(config) or _default_lock_dir() if exclusive else None,
        )
    except FolderError as exc:
        raise pytest.UsageError(str(exc)) from None


def _lock_dir(config: pytest.Config) -> Path | None:
    from .options import value

    given = value(config, "jumpstarter_lock_dir") or os.environ.get("JUMPSTARTER_LOCK_DIR")
    return Path(given).resolve() if given else None


def _default_lock_dir() -> Path:
    from .locking import DEFAULT_LOCK_DIR

    return DEFAULT_LOCK_DIR


TEARDOWN_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _signal_to_interrupt(signum: int, frame: FrameType | None) -> None:
    # Later signals are ignored while teardown runs; a CI runner that loses patience sends SIGKILL.
    for other in TEARDOWN_SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN, None)
    if run is None:
        return
    try:
        if run.manager is not None:
            for exc in run.manager.stop_all():
                _warn(config, f"stopping a device failed: {run.redact(str(exc))}")
    finally:
        for signum, previous in run.previous_handlers.items():
            if previous is not None:
                signal.signal(signum, previous)
        del config.stash[RUN]


def _warn(config: pytest.Config, text: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"jumpstarter: {text}", red=True)
    else:
        import sys

        sys.stderr.write(f"jumpstarter: {text}\n")


def _target_paths(config: pytest.Config) -> list[tuple[Path, str]]:
    """The target files asked for, as (path, how the user wrote it): --target, else the env, else ini."""
    here = config.invocation_params.dir
    given: list[str] = list(config.option.jumpstarter_target or [])
    if given:
        return [(here / g, g) for g in given]
    env = os.environ.get(ENV_VAR, "")
    if env.strip():
        return [(here / g, g) for g in env.split(os.pathsep) if g.strip()]
    listed = config.getini("jumpstarter_target") or config.getini(INI_TARGETS)
    if listed:
        base = config.inipath.parent if config.inipath else config.rootpath
        return [(base / g, g) for g in listed]
    return []


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    from .options import header_note

    note = header_note(config)
    run = config.stash.get(RUN, None)
    if run is None or not run.targets:
        return [note] if note else None
    shown = ", ".join(
        f"{t.name} ({src}, {len(t.devices)} devices)" for t, src in zip(run.targets, run.sources, strict=True)
    )
    return [f"jumpstarter targets: {shown}", *([note] if note else [])]


# --- which tests need which target ------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    run = metafunc.config.stash.get(RUN, None)
    if run is None or not run.targets:
        return
    from .selection import fixture_roles, is_device_test, needs

    markers = list(metafunc.definition.iter_markers("device"))
    if not is_device_test(markers, metafunc.fixturenames):
        return
    wanted = needs(markers, fixture_roles(metafunc))
    params = []
    for target in run.targets:
        reason = wanted.unmet(target)
        marks = (pytest.mark.skip(reason=reason),) if reason else ()
        params.append(pytest.param(target.name, id=target.name, marks=marks))
    metafunc.parametrize(TARGET_FIXTURE, params, indirect=True, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Before -m deselects: a test that uses a device fixture is a device test, marked or not.
    for item in items:
        if item.get_closest_marker("device") is None and DEVICE_TEST in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
    run = config.stash.get(RUN, None)
    if run is not None and run.targets:
        return
    skip = pytest.mark.skip(reason=HOW_TO_ENABLE)
    for item in items:
        if item.get_closest_marker("device") is not None:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    if not _listing(session.config):
        return None
    run = session.config.stash.get(RUN, None)
    from .listing import render

    def more(target: Any, device: Any) -> list[str]:
        found = session.config.hook.pytest_jumpstarter_list_device(
            config=session.config, target=target, device=device
        )
        return [line for lines in found for line in lines]

    text = render(run.targets if run else [], run.sources if run else [], session.items, more)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    out = run.redact(text) if run else text
    if reporter is not None:
        reporter.write_line("")
        for line in out.splitlines():
            reporter.write_line(line)
    else:
        print(out)
    return True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _listing(config) and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK
    run = config.stash.get(RUN, None)
    if run is not None and run.manager is not None:
        for exc in run.manager.stop_all():
            _warn(config, f"stopping a device failed: {run.redact(str(exc))}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    yield
    run = item.config.stash.get(RUN, None)
    if run is not None and run.manager is not None and run.manager.has_module_devices():
        module = item.getparent(pytest.Module)
        if nextitem is None or nextitem.getparent(pytest.Module) is not module:
            # The last test of a module: its module-scoped devices have served their purpose.
            run.manager.end_module()


# --- reports: console transcripts, cold boots, secrets -----------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    run = item.config.stash.get(RUN, None)
    if run is not None and run.manager is not None:
        for device, text in run.manager.transcripts(item, final=call.when == "teardown"):
            item.add_report_section(call.when, f"console {device}", text)
    report = yield
    if run is None:
        return report
    if run.manager is not None and report.failed:
        run.manager.record_outcome(item, failed=True)
    if call.when == "setup" and call.excinfo is not None:
        from .lifecycle import DEVICE_FAILURE

        failure = item.stash.get(DEVICE_FAILURE, None)
        if failure is not None and failure[0] is call.excinfo.value:
            # A device that would not start: the driver's message says it all, the plugin's frames nothing.
            report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}\n({failure[1]})"
    if run.redact:
        report.sections = [(name, run.redact(content)) for name, content in report.sections]
        if report.longrepr is not None:
            text = str(report.longrepr)
            if run.redact(text) != text:
                report.longrepr = run.redact(text)
    return report


# --- fixtures -------------------------------------------------------------------------------------------


def _manager(config: pytest.Config, request: pytest.FixtureRequest) -> DeviceManager:
    run = config.stash[RUN]
    if run.manager is None:
        from .lifecycle import DeviceManager
        from .options import value
        from .progress import TerminalProgress

        logdir: str | None = value(config, "jumpstarter_logdir")

        def make_logdir() -> Path:
            if logdir:
                return (config.invocation_params.dir / logdir).resolve()
            factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
            return factory.getbasetemp() / "jumpstarter-logs"

        worker = getattr(config, "workerinput", {}).get("workerid")
        progress = TerminalProgress(config, value(config, "jumpstarter_progress"))
        run.manager = DeviceManager(
            run.targets,
            config.hook,
            run.redact,
            make_logdir,
            extra={**({"worker": worker} if worker else {}), **cache_options(config)},
            lock_dir=_lock_dir(config),
            lock_timeout=value(config, "jumpstarter_lock_timeout"),
            notify=progress.tell,
            progress=progress,
        )
    return run.manager


@pytest.fixture(scope="session", autouse=True)
def _jumpstarter_target(request: pytest.FixtureRequest) -> TargetDescription | None:
    """The target of the current device test (parametrized per target), None for other tests."""
    name = getattr(request, "param", None)
    if name is None:
        return None
    manager = _manager(request.config, request)
    manager.activate(name)
    return manager.targets[name]


@pytest.fixture
def jumpstarter_target(
    request: pytest.FixtureRequest, _jumpstarter_target: TargetDescription | None
) -> Generator[Target]:
    """The target this test runs on; ``jumpstarter_target.device(role)`` starts a device for the test.

    Also ``target``, unless another plugin (pytest-embedded) owns that name.
    """
    if _jumpstarter_target is None:
        pytest.skip(HOW_TO_ENABLE)
    from .target_fixture import Target

    manager = _manager(request.config, request)
    item = request.node
    assert isinstance(item, pytest.Item)
    try:
        yield Target(_jumpstarter_target, manager, item)
    finally:
        manager.finish_test(item)


class ShortTargetFixture:
    """The ``target`` fixture, registered only when this plugin owns ``--target`` (see options)."""

    @pytest.fixture
    def target(self, jumpstarter_target: Target) -> Target:
        """The target this test runs on (the same as ``jumpstarter_target``)."""
        return jumpstarter_target


def device_fixture(role: str, *, name: str | None = None, doc: str | None = None) -> Any:
    """A fixture giving the device that serves ``role`` on the current target, started for the test.

    Each driver family makes the fixtures of its roles with it (``console`` in the serial family,
    ``qemu_vm``, ``flasher``, ``net_tunnel`` in theirs); a third-party package does the same:
    ``my_probe = device_fixture("my_probe")`` at the top of its module.  A test using such a fixture
    is a device test (as if marked ``@pytest.mark.device(role)``).
    """
    from .selection import ROLE_ATTRIBUTE

    def fixture(jumpstarter_target: Target) -> Any:
        __tracebackhide__ = True
        return jumpstarter_target.device(role)

    fixture.__name__ = name or role
    fixture.__doc__ = doc or f"The device serving role {role!r} on the current target, started for this test."
    setattr(fixture, ROLE_ATTRIBUTE, role)
    return pytest.fixture(name=name or role)(fixture)
