"""`msk train mura|wrist`: train the MURA ensemble members or the wrist detectors."""

from __future__ import annotations

import argparse

from msk.commands._families import add_family_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_family_command(
        subparsers, "train", "train models (MURA ensemble members, wrist detectors)",
        "Train a model family. `msk train mura --help` and `msk train wrist --help` list each "
        "family's options. Nothing is downloaded: weights come from local files.",
        "register_train",
    )
