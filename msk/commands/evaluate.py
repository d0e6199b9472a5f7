"""`msk evaluate mura|wrist`: evaluation reports (metrics with intervals, plots, Markdown)."""

from __future__ import annotations

import argparse

from msk.commands._families import add_family_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_family_command(
        subparsers, "evaluate", "evaluate trained models and write a report",
        "Evaluate a model family on a labelled split and write a Markdown report with plots. "
        "`msk evaluate mura --help` / `msk evaluate wrist --help` list the options.",
        "register_evaluate",
    )
