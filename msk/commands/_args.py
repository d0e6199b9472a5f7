"""Argument types shared by the subcommands: one wording for one mistake."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (a utilisation, a share)."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (e.g. 0.6), got {text}")
    return value


def add_ood_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """`--ood flag|refuse`, worded once for every command that scores MURA images (docs/ood.md);
    each command states its own default (the gateway's, in its settings, is refuse)."""
    from msk.constants import OOD_POLICIES, OOD_REFUSED_REASON

    parser.add_argument(
        "--ood", choices=OOD_POLICIES, default=default,
        help="out-of-distribution policy: flag scores every image and says in_distribution "
        "true/false; refuse gives an image whose OOD score is above its body part's threshold "
        f"no probability and no call, only error_reason {OOD_REFUSED_REASON} (its study is "
        f"called on the other images and says how many were refused) (default {default})")
