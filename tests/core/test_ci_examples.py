"""The CI examples run the README's commands, on boards that exist, with a tox env for each."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "conftest_examples" / "ci"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Reports and CI", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", section, re.S)
    assert block is not None, "README's Reports and CI section has a console block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def normal(command: str, board: str) -> list[str]:
    command = command.replace("${{ matrix.board }}", board).replace("${BOARD}", board)
    return shlex.split(command)


def as_readme(command: str, board: str) -> list[str]:
    return normal(command.replace("qemu-x86_64.yaml", f"{board}.yaml"), board)


def test_github_workflow_runs_the_readme_commands_on_each_board() -> None:
    flow = yaml.safe_load((CI / "github-actions.yml").read_text())
    job = flow["jobs"]["examples"]
    boards = job["strategy"]["matrix"]["board"]
    runs = [step["run"] for step in job["steps"] if "run" in step]
    uploads = [
        step for step in job["steps"] if str(step.get("uses", "")).startswith("actions/upload-artifact")
    ]
    assert uploads and uploads[0]["if"] == "always()" and uploads[0]["with"]["path"] == "reports/"
    for board in boards:
        assert (ROOT / "conftest_examples" / f"{board}.yaml").is_file()
        assert [normal(r, board) for r in runs] == [as_readme(c, board) for c in readme_commands()]


def test_gitlab_job_runs_the_readme_commands_on_each_board() -> None:
    job = yaml.safe_load((CI / "gitlab-ci.yml").read_text())["hil"]
    boards = job["parallel"]["matrix"][0]["BOARD"]
    assert (
        job["artifacts"]["when"] == "always" and job["artifacts"]["reports"]["junit"] == "reports/junit.xml"
    )
    for board in boards:
        assert (ROOT / "conftest_examples" / f"{board}.yaml").is_file()
        assert [normal(c, board) for c in job["script"]] == [as_readme(c, board) for c in readme_commands()]


def test_each_example_board_has_a_tox_env_running_the_readme_command() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    (pytest_line,) = [c for c in readme_commands() if " -m pytest " in c]
    expected = pytest_line.split(" -m ", 1)[1].replace("qemu-x86_64.yaml", "{env:BOARD}.yaml")
    assert tox["board"]["commands"].strip() == f"{expected} {{posargs}}"
    boards = sorted(
        p.stem for p in (ROOT / "conftest_examples").glob("*.yaml") if "board" in p.stem or "qemu" in p.stem
    )
    for board in boards:
        if board == "jumpstarter-qemu":
            continue  # needs a Jumpstarter exporter, not a CI runner's QEMU alone
        env = tox[f"testenv:board-{board}"]
        assert env["setenv"].strip() == f"BOARD = {board}"
        assert env["commands"].strip() == "{[board]commands}"
