"""The project's packaging stays consistent: pins, entry points, CI and README commands."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirement_name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_pinned_exactly():
    project = _pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    loose = [requirement for requirement in requirements if "==" not in requirement]
    assert not loose, f"unpinned requirements in pyproject.toml: {loose}"


def test_environment_yml_matches_pyproject():
    project = _pyproject()["project"]
    wanted = set(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        wanted.update(extra)
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    listed = {item for item in pip_section if not item.startswith("-e")}
    assert {_requirement_name(r): r for r in listed} == {_requirement_name(r): r for r in wanted}


def test_console_script_and_module_entry_points_work():
    result = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("synth", "prepare", "eda", "train", "sweep", "agent", "status", "launch",
                    "postprocess", "evaluate", "predict", "compare"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), f"`harness {command}` missing:\n{result.stdout}"


def test_ci_runs_the_readme_test_command():
    readme_lines = (REPO / "README.md").read_text().splitlines()
    code = [line for line in readme_lines if line.startswith("make ")]
    assert [line.split()[1] for line in code[:2]] == ["demo", "test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()
