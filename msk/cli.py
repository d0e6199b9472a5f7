"""The `msk` console command.

Each capability lives in its own module under `msk/commands/` exposing
`register(subparsers) -> None`; this file only discovers and dispatches them, so adding a
subcommand never means editing a shared list.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from msk import RESEARCH_USE_NOTICE, __version__
from msk import commands as commands_pkg
from msk.commands._parts import install_hint, part_providing, parts_epilog

PROJECT_PACKAGES = ("msk", "clients", "server", "export", "training")
EXIT_MISSING_PART = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msk",
        description=f"msk-triton {__version__}: musculoskeletal radiograph AI on NVIDIA Triton. "
        + RESEARCH_USE_NOTICE,
        epilog=parts_epilog(),
    )
    parser.add_argument("--version", action="version", version=f"msk-triton {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands_pkg.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ModuleNotFoundError as exc:
        # A part of the project that is not installed (README "Install a part"); a missing
        # module of the project itself is a bug and keeps its traceback.
        if not exc.name or exc.name.split(".")[0] in PROJECT_PACKAGES:
            raise
        print(f"msk {args.command}: {exc}; {install_hint(part_providing(exc.name, args.command))}",
              file=sys.stderr)
        return EXIT_MISSING_PART


if __name__ == "__main__":
    sys.exit(main())
