"""Shared by `msk train` and `msk evaluate`: one parser per model family.

Each family's options live next to its code in `training/<family>_cli.py`, which defines
`register_train(subparsers)` and `register_evaluate(subparsers)`; this only groups them.
"""

from __future__ import annotations

import argparse
import importlib

FAMILIES = ("mura", "wrist")


def add_family_command(subparsers: argparse._SubParsersAction, name: str, help_text: str,
                       description: str, hook: str) -> argparse._SubParsersAction:
    """Add `msk <name> FAMILY`, letting each `training.<family>_cli.<hook>` add its parser;
    returns the families (`.choices[family]` is a family's parser)."""
    p = subparsers.add_parser(name, help=help_text, description=description)
    families = p.add_subparsers(dest="family", metavar="FAMILY")
    families.required = True
    for family in FAMILIES:
        getattr(importlib.import_module(f"training.{family}_cli"), hook)(families)
    return families
