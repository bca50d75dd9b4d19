"""Reports a failed HIL test explains itself with: JUnit XML, pytest-html and Allure.

Registered by the plugin when a run has targets.  What a test's report carries (all redacted):

- its console transcripts, as report sections (``console <device>``, added by :mod:`.plugin`);
- properties (``item.user_properties``, so they cross xdist): the target and its file, each device
  used with its driver, its log file, and whatever the device reports about itself
  (:class:`ReportsProperties`: the image checksums of a flasher, the lease of a remote board);
- on failure, a PNG of each device with a display (:class:`HasDisplay`), in the test's log folder.

The JUnit writer gets each device's transcript in ``<system-out>`` (bounded: the beginning and the
end) with a ``[[ATTACHMENT|file]]`` line naming the full log (the convention Jenkins and GitLab read),
and suite properties (plugin version, target files).  pytest-html gets the same as extras, Allure as
attachments; neither is imported unless installed and asked for.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pytest

if TYPE_CHECKING:
    from .lifecycle import DeviceManager, LiveDevice
    from .plugin import Run

#: How much of one device's transcript goes into a JUnit ``<system-out>``: the first ``HEAD`` and the
#: last ``JUNIT_LIMIT - HEAD`` characters (the log file it names has everything).
JUNIT_LIMIT = 64 * 1024
HEAD = 8 * 1024
PROPERTY_PREFIX = "jumpstarter_"
SECTION_PREFIX = "console "
#: Screenshots taken for a failed test, kept on the item until its last report.
SCREENSHOTS = pytest.StashKey[list[tuple[str, Path]]]()


@runtime_checkable
class ReportsProperties(Protocol):
    """A device that says something about itself in every report: ``{"flash": "<image> crc32:..."}``."""

    def report_properties(self) -> Mapping[str, str]: ...


@runtime_checkable
class HasDisplay(Protocol):
    """A device with a screen: ``screenshot(path)`` writes a PNG and returns its path."""

    @property
    def has_display(self) -> bool: ...

    def screenshot(self, path: Path | None = None) -> Path: ...


def bound(text: str, limit: int = JUNIT_LIMIT, head: int = HEAD) -> str:
    """``text`` cut to about ``limit`` characters, keeping its beginning and its end."""
    if len(text) <= limit:
        return text
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[... {omitted} characters omitted: see the log file ...]\n{text[-tail:]}"


def safe_name(text: str) -> str:
    from .lifecycle import _safe

    return _safe(text)


# --- what a test's report carries ----------------------------------------------------------------


def item_properties(item: pytest.Item, manager: DeviceManager) -> list[tuple[str, str]]:
    """The properties of ``item``'s report: target, file, devices, drivers, logs, device reports."""
    from .lifecycle import ITEM_DEVICES

    used = item.stash.get(ITEM_DEVICES, None)
    if used is None or not used.devices:
        return []
    target = used.devices[0].target
    props = [(f"{PROPERTY_PREFIX}target", target.name), (f"{PROPERTY_PREFIX}target_file", str(target.source))]
    for device in used.devices:
        name = device.spec.name
        props.append((f"{PROPERTY_PREFIX}device_{name}", device.spec.driver.name))
        if used.log_dir is not None:
            log = used.log_dir / f"{safe_name(name)}.log"
            if log.exists():
                props.append((f"{PROPERTY_PREFIX}log_{name}", str(log)))
        props.extend(_device_properties(device))
    for name, path in item.stash.get(SCREENSHOTS, []):
        props.append((f"{PROPERTY_PREFIX}screenshot_{name}", str(path)))
    return [(key, manager.redact(value)) for key, value in props]


def _device_properties(device: LiveDevice) -> Iterable[tuple[str, str]]:
    driver = device.driver
    if not isinstance(driver, ReportsProperties):
        return []
    try:
        reported = driver.report_properties()
    except Exception as exc:  # a report must not fail because a device could not describe itself
        reported = {"error": f"report_properties() failed: {type(exc).__name__}: {exc}"}
    return [(f"{PROPERTY_PREFIX}{device.spec.name}_{key}", str(value)) for key, value in reported.items()]


def take_screenshots(item: pytest.Item, manager: DeviceManager) -> list[tuple[str, Path]]:
    """A PNG of every device of ``item`` that has a display, in the test's log folder."""
    from .lifecycle import ITEM_DEVICES

    used = item.stash.get(ITEM_DEVICES, None)
    if used is None or used.log_dir is None:
        return []
    shots = item.stash.setdefault(SCREENSHOTS, [])
    for device in used.devices:
        driver = device.driver
        if not isinstance(driver, HasDisplay) or not driver.has_display or not driver.started:
            continue
        path = used.log_dir / f"{safe_name(device.spec.name)}.png"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            shots.append((device.spec.name, driver.screenshot(path)))
        except Exception as exc:
            item.add_report_section(
                "call", "jumpstarter", f"screenshot of {device.spec.name} failed: {manager.redact(str(exc))}"
            )
    return shots


def consoles(report: pytest.TestReport) -> dict[str, str]:
    """Each device's transcript in ``report``, its phases joined (sections ``console <device>``)."""
    found: dict[str, list[str]] = {}
    for title, content in report.sections:
        # Sections are named "Captured console <device> <phase>" by item.add_report_section.
        if not title.startswith(f"Captured {SECTION_PREFIX}"):
            continue
        device, _, phase = title[len(f"Captured {SECTION_PREFIX}") :].rpartition(" ")
        found.setdefault(device, []).append(f"--- {phase} ---\n{content}")
    return {device: "\n".join(parts) for device, parts in found.items()}


def properties(report: pytest.TestReport, kind: str) -> dict[str, str]:
    """The ``jumpstarter_<kind>_<device>`` properties of ``report``, by device."""
    prefix = f"{PROPERTY_PREFIX}{kind}_"
    return {k[len(prefix) :]: str(v) for k, v in report.user_properties if k.startswith(prefix)}


# --- the hooks ---------------------------------------------------------------------------------------


class ReportPlugin:
    """The report side of one run; registered after the plugin so its wrappers are the outer ones."""

    def __init__(self, run: Run, config: pytest.Config) -> None:
        self.run = run
        self.config = config
        self._rerun: set[tuple[str, object]] = set()

    @property
    def manager(self) -> DeviceManager | None:
        return self.run.manager

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # A rerun (pytest-rerunfailures) runs the same item again: it starts with no devices, so a
        # kept board is restored for it, and with none of the previous attempt's sections.
        from .lifecycle import ITEM_DEVICES

        with contextlib.suppress(KeyError):
            del item.stash[ITEM_DEVICES]
        with contextlib.suppress(KeyError):
            del item.stash[SCREENSHOTS]
        sections: list[tuple[str, str, str]] = getattr(item, "_report_sections", [])
        sections[:] = [s for s in sections if not (s[1].startswith(SECTION_PREFIX) or s[1] == "jumpstarter")]
        item.user_properties[:] = [p for p in item.user_properties if not p[0].startswith(PROPERTY_PREFIX)]
        if _allure_on(self.config):
            # Inside allure's own setup wrapper, before it copies the parameters into its result.
            allure_parameters(item)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        manager = self.manager
        if manager is not None:
            if call.when == "call" and call.excinfo is not None:
                take_screenshots(item, manager)
            if call.when == "teardown":
                item.user_properties.extend(item_properties(item, manager))
        report = yield
        if manager is not None:
            self._attach(item, report)
        return report

    def _attach(self, item: pytest.Item, report: pytest.TestReport) -> None:
        shots = item.stash.get(SCREENSHOTS, [])
        if report.when == "teardown" and getattr(self.config.option, "htmlpath", None):
            # pytest-html gathers the extras of every phase; the teardown report has every section.
            setattr(report, "extras", [*getattr(report, "extras", []), *html_extras(report, shots)])  # noqa: B010
        if _allure_on(self.config) and (report.when == "call" or (report.when == "setup" and report.failed)):
            allure_attach(report, shots)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        key = (report.nodeid, getattr(report, "node", None))
        if str(report.outcome) == "rerun":  # pytest-rerunfailures sets an outcome pytest does not know
            # An attempt pytest-rerunfailures repeats: the JUnit test case is the last attempt's.
            self._rerun.add(key)
        elif report.when == "teardown":
            if key in self._rerun:
                self._rerun.discard(key)
            else:
                junit_system_out(self.config, report)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        xml = _logxml(self.config)
        if xml is None:
            return
        from importlib.metadata import PackageNotFoundError, version

        with contextlib.suppress(PackageNotFoundError):
            xml.add_global_property(f"{PROPERTY_PREFIX}version", version("pytest-jumpstarter"))
        for target, source in zip(self.run.targets, self.run.sources, strict=True):
            xml.add_global_property(f"{PROPERTY_PREFIX}target_file_{target.name}", self.run.redact(source))


# --- JUnit -------------------------------------------------------------------------------------------


def _logxml(config: pytest.Config) -> Any:
    # The JUnit writer has no public handle; its stash key has been stable since pytest 7.
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - a pytest that moved it: properties still get through
        return None
    return config.stash.get(xml_key, None)


def junit_system_out(config: pytest.Config, report: pytest.TestReport) -> None:
    """Each device's bounded transcript and its log file, into this test's ``<system-out>``."""
    xml = _logxml(config)
    if xml is None:
        return
    texts = consoles(report)
    logs = properties(report, "log")
    shots = properties(report, "screenshot")
    if not texts and not logs and not shots:
        return
    import xml.etree.ElementTree as ET

    parts = []
    for device in dict.fromkeys([*texts, *logs]):
        parts.append(f"{f' console {device} '.center(80, '-')}\n{bound(texts.get(device, ''))}")
    parts.extend(f"[[ATTACHMENT|{path}]]" for path in [*logs.values(), *shots.values()])
    node = ET.Element("system-out")
    node.text = _xml_text("\n".join(parts) + "\n")
    xml.node_reporter(report).append(node)


def _xml_text(text: str) -> str:
    from _pytest.junitxml import bin_xml_escape

    return str(bin_xml_escape(text))


# --- pytest-html -------------------------------------------------------------------------------------


def html_extras(report: pytest.TestReport, shots: list[tuple[str, Path]]) -> list[dict[str, Any]]:
    """pytest-html extras: each device's console, its screenshots, links to its log files."""
    from pytest_html import extras

    found: list[dict[str, Any]] = []
    for device, text in consoles(report).items():
        found.append(extras.text(text, name=f"console {device}"))
    for device, path in shots:
        if path.exists():
            found.append(extras.png(base64.b64encode(path.read_bytes()).decode(), name=f"screen {device}"))
    for device, log in properties(report, "log").items():
        found.append(extras.url(Path(log).as_uri(), name=f"log {device}"))
    folders = {str(Path(p).parent) for p in properties(report, "log").values()}
    found.extend(extras.url(Path(folder).as_uri(), name="log folder") for folder in sorted(folders))
    return found


# --- Allure ------------------------------------------------------------------------------------------


def _allure_on(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "allure_report_dir", None))


def allure_parameters(item: pytest.Item) -> None:
    """The target by its own name, and the plugin's internal fixture parameter hidden."""
    import allure

    from .plugin import TARGET_FIXTURE

    params = getattr(getattr(item, "callspec", None), "params", {})
    if TARGET_FIXTURE in params:
        allure.dynamic.parameter(TARGET_FIXTURE, params[TARGET_FIXTURE], mode=allure.parameter_mode.HIDDEN)
        allure.dynamic.parameter("target", params[TARGET_FIXTURE])


def allure_attach(report: pytest.TestReport, shots: list[tuple[str, Path]]) -> None:
    import allure

    for device, text in consoles(report).items():
        allure.attach(text, name=f"console {device}", attachment_type=allure.attachment_type.TEXT)
    for device, path in shots:
        if path.exists():
            allure.attach(
                path.read_bytes(), name=f"screen {device}", attachment_type=allure.attachment_type.PNG
            )
