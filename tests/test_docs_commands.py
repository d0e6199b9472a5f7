"""Every `msk` command that README.md and docs/ show is exercised by some test.

A command in the docs that no test runs is a defect: it is what users copy. This reads every
`msk ...` command in the README's and the guides' code (fenced blocks and inline code) and checks
that each subcommand, and each of its flags, appears in a test that runs that subcommand.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]*\bmsk [^`\n]*)`")
_COMMAND = re.compile(r"(?:^|[\s(;&])(?:\.venv/bin/)?msk ([a-z][a-z-]*)(.*)")
FAMILY_COMMANDS = {"train", "evaluate"}


def _commands_in(text: str) -> list[str]:
    snippets = [line for block in _FENCE.findall(text)
                for line in re.sub(r"\\\n\s*", " ", block).splitlines()]   # join `\` lines
    snippets += _INLINE.findall(text)
    out = []
    for snippet in snippets:
        if "-->" in snippet:                      # a diagram's arrow, not a command
            continue
        match = _COMMAND.search(snippet)
        if match:
            rest = re.split(r"\s(?:#|\||&&|&)(?:\s|$)", match.group(2))[0]
            out.append(f"{match.group(1)}{rest}")
    return out


def documented_commands() -> list[tuple[str, str, str]]:
    """(doc file, subcommand key, flag or "") for every documented command and flag."""
    from msk.cli import build_parser

    parser = build_parser()
    known = next(a for a in parser._actions if a.dest == "command").choices
    found = []
    for doc in DOCS:
        for command in _commands_in(doc.read_text()):
            try:
                tokens = shlex.split(command.replace("\\", " "))
            except ValueError:
                tokens = command.split()
            sub = tokens[0]
            if sub not in known:
                continue
            key = f"{sub} {tokens[1]}" if sub in FAMILY_COMMANDS and len(tokens) > 1 else sub
            found.append((doc.name, key, ""))
            for token in tokens[1:]:
                flag = token.lstrip("[").split("=")[0].rstrip("]")
                if re.fullmatch(r"--[a-z][a-z0-9-]*", flag):
                    found.append((doc.name, key, flag))
    return sorted(set(found))


def _test_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in (ROOT / "tests").rglob("*.py")
            if p.name != Path(__file__).name}


def _runs(source: str, key: str) -> bool:
    """Does this test source start `msk KEY` (as a process or through msk.cli.main)?"""
    words = key.split()
    pattern = r"[\"']" + r"[\"'],\s*[\"']".join(map(re.escape, words)) + r"[\"']"
    return re.search(pattern, source) is not None


def test_the_docs_show_commands_at_all() -> None:
    keys = {key for _, key, _ in documented_commands()}
    assert {"serve", "score", "detect", "export", "gateway", "web", "train mura"} <= keys


@pytest.mark.parametrize(("doc", "key", "flag"), documented_commands(),
                         ids=lambda v: v or "-")
def test_documented_command_is_exercised(doc: str, key: str, flag: str) -> None:
    sources = _test_sources()
    running = [name for name, text in sources.items() if _runs(text, key)]
    assert running, f"{doc} shows `msk {key}` but no test runs it"
    if flag:
        assert any(f'"{flag}"' in sources[name] or f"'{flag}'" in sources[name]
                   for name in running), (
            f"{doc} shows `msk {key} {flag}` but no test that runs `msk {key}` uses {flag}")
