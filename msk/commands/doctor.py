"""`msk doctor`: check that the local Triton runtime and its Python backend are usable here."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor", help="check the local tritonserver installation",
        description="Locate the tritonserver binary, its python backend and the stub for this "
        "Python, and print what was found. Exits non-zero if anything is missing.",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from server.runtime import locate_runtime

    runtime = locate_runtime()
    for key, value in runtime.describe().items():
        print(f"{key}: {value}")
    return 0
