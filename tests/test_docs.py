"""Docs stay true: every command shown in README.md and docs/ exists, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from harness import cli

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "jobs").glob("*.md"))]
MODULE_COMMANDS = {
    # `python -m harness.X` entry points and the click command each one runs.
    "harness.train": ("train",),
    "harness.sweep": ("sweep", "create"),
    "harness.launch": ("launch",),
    "harness.cli": (),
    "harness": (),
}


def _code_lines(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside:
            lines.append(line.strip())
    # Inline code spans that look like commands count too.
    lines.extend(span.strip() for span in re.findall(r"`([^`\n]+)`", text))
    return lines


def _harness_commands(lines: list[str]) -> list[tuple[str, list[str]]]:
    found = []
    for line in lines:
        line = line.split("#", 1)[0].strip().lstrip("$ ").strip()
        words = line.split()
        if len(words) >= 2 and words[0] == "harness" and not words[1].startswith("-"):
            found.append((line, words[1:]))
        elif len(words) >= 3 and words[:2] == ["python", "-m"] and words[2] in MODULE_COMMANDS:
            found.append((line, list(MODULE_COMMANDS[words[2]]) + words[3:]))
    return found


def _resolve(words: list[str]) -> click.Command | None:
    command: click.Command = cli.main
    for word in words:
        if not isinstance(command, click.Group) or word.startswith("-") or word not in command.commands:
            break
        command = command.commands[word]
    return command


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_every_harness_command_in_the_docs_exists(doc: Path):
    for line, words in _harness_commands(_code_lines(doc.read_text())):
        command = _resolve(words)
        if isinstance(command, click.Group) and len(words) > 1 and not words[-1].startswith("-"):
            # A group followed by a word that is not one of its subcommands is a typo in the docs,
            # unless the group takes arguments itself (none of ours do).
            sub = words[len(words) - 1]
            assert sub in command.commands or not sub.isidentifier(), f"{doc.name}: `{line}`: no subcommand {sub!r}"
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        options.update({"--help", "-h"})
        for word in words:
            if word.startswith("--") and not isinstance(command, click.Group):
                name = word.split("=", 1)[0]
                # Commands that pass --key=value through to the training config accept any config key.
                if command.context_settings.get("ignore_unknown_options"):
                    continue
                assert name in options, f"{doc.name}: `{line}` uses {name}, which `{' '.join(words[:1])}` does not have"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_make_targets_in_the_docs_exist(doc: Path):
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.MULTILINE))
    for line in _code_lines(doc.read_text()):
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "make":
            target = next((word for word in words[1:] if "=" not in word and not word.startswith("-")), None)
            if target:
                assert target in targets, f"{doc.name}: `{line}`: no make target {target!r}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_resolve(doc: Path):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith(("#", "mailto:")):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{doc.name}: link to {target} does not resolve"
