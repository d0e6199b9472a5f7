"""The `msk` console command: installed in the venv, help text on every subcommand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from msk.cli import build_parser

MSK = Path(sys.executable).parent / "msk"
CONTRACT = {"serve", "score", "detect", "train", "export", "gateway", "web"}


def _subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_contract_subcommands_exist_with_help():
    commands = _subcommands()
    assert set(commands) >= CONTRACT, f"missing: {CONTRACT - set(commands)}"
    for name, sub in commands.items():
        assert sub.description, f"`msk {name}` has no description"
        for action in sub._actions:
            if action.dest not in ("help",) and action.option_strings:
                assert action.help, f"`msk {name} {action.option_strings[0]}` has no help"


def test_console_script_prints_help_for_every_subcommand():
    assert MSK.is_file(), "msk is not installed in the venv"
    out = subprocess.run([str(MSK), "--help"], capture_output=True, text=True, check=True)
    assert "Research use only" in " ".join(out.stdout.split())
    for name in _subcommands():
        sub = subprocess.run([str(MSK), name, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0, sub.stderr
        assert "usage: msk" in sub.stdout
