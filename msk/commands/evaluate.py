"""`msk evaluate mura|wrist`: evaluation reports (metrics with intervals, plots, Markdown).

Each family's options live in `training/<family>_cli.py` (`register_evaluate(subparsers)`).
"""

from __future__ import annotations

import argparse
import importlib

FAMILIES = ("mura", "wrist")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate trained models and write a report",
        description="Evaluate a model family on a labelled split and write a Markdown report with "
        "plots. `msk evaluate mura --help` / `msk evaluate wrist --help` list the options.",
    )
    families = p.add_subparsers(dest="family", metavar="FAMILY")
    families.required = True
    for family in FAMILIES:
        importlib.import_module(f"training.{family}_cli").register_evaluate(families)
