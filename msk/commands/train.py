"""`msk train mura|wrist`: train the MURA ensemble members or the wrist detectors.

The options of each family live next to its training code (`training/mura_cli.py`,
`training/wrist_cli.py`, each with `register_train(subparsers)`); this module only groups them.
"""

from __future__ import annotations

import argparse
import importlib

FAMILIES = ("mura", "wrist")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train models (MURA ensemble members, wrist detectors)",
        description="Train a model family. `msk train mura --help` and `msk train wrist --help` "
        "list each family's options. Nothing is downloaded: weights come from local files.",
    )
    families = p.add_subparsers(dest="family", metavar="FAMILY")
    families.required = True
    for family in FAMILIES:
        importlib.import_module(f"training.{family}_cli").register_train(families)
