"""scripts/reliability-report renders RELIABILITY.md from the fault records; the committed file is its output."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "reliability-report"


def _rows(markdown: str) -> list[list[str]]:
    lines = [
        line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| Fault")
    ]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_the_command_renders_each_record_with_the_peers_columns(tmp_path: Path) -> None:
    records = {
        "sigterm": {"fault": "SIGTERM to pytest", "seen": "exit 2", "left": [], "seconds": 1.5, "exit": 2},
        "new": {
            "fault": "a fault peers.md knows nothing of",
            "seen": "a | b",
            "left": ["temp x"],
            "seconds": 2,
            "exit": 1,
        },
    }
    for name, rec in records.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(rec))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert (
        "| Fault | What the user sees | Left behind | Time to end | labgrid | pytest-embedded | Jumpstarter |"
        in out
    )
    rows = {r[0]: r for r in _rows(out)}
    assert rows["SIGTERM to pytest"][2:] == [
        "nothing",
        "1.5 s",
        "leaves child processes on SIGTERM (a CI cancel)",
        "leaves QEMU and helper processes on SIGTERM",
        "the client keeps its lease held on SIGTERM",
    ]
    unknown = rows["a fault peers.md knows nothing of"]
    assert unknown[1] == "a \\| b" and unknown[2] == "temp x" and unknown[4:] == ["not stated"] * 3


def test_the_committed_report_has_every_fault_the_suite_records_and_peers_for_each() -> None:
    text = (ROOT / "RELIABILITY.md").read_text()
    rows = _rows(text)
    assert rows and all(len(r) == 7 for r in rows), rows
    faults = {r[0] for r in rows}
    # Each fault the script has peer facts for is a row (a renamed fault would lose its facts silently).
    loader = SourceFileLoader("reliability_report", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    assert set(module.PEERS) <= faults, set(module.PEERS) - faults
    assert all(r[2] == "nothing" for r in rows), [r for r in rows if r[2] != "nothing"]
