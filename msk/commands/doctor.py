"""`msk doctor`: is the local Triton runtime usable here, and is the model repository coherent?"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor", help="check the local tritonserver installation and the model repository",
        description="Locate the tritonserver binary, its python backend and the stub for this "
        "Python, then check the model repository: every model of a pipeline has the same "
        "versions, manifest.json describes every version folder, every artifact matches its "
        "SHA-256, no export was interrupted. Exits non-zero if anything is wrong.",
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"),
                   help="model repository to check (default: ./model_repository; a missing "
                   "folder is reported, not an error)")
    p.add_argument("--repair", action="store_true",
                   help="roll back an export that was killed while moving its version in")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from export.consistency import describe_repository, repository_problems
    from export.staging import recover
    from msk.cli import EXIT_MISSING_PART
    from msk.commands._parts import install_hint
    from msk.host import describe
    from server.runtime import RuntimeNotFound, locate_runtime

    try:
        runtime = locate_runtime()
    except RuntimeNotFound as exc:
        # A client-only install has no tritonserver: say which part brings it, no traceback.
        print(f"msk doctor: no usable tritonserver here ({exc}); {install_hint('serve')}",
              file=sys.stderr)
        return EXIT_MISSING_PART
    for key, value in runtime.describe().items():
        print(f"{key}: {value}")
    print(f"cpu: {describe()}")
    if not args.repository.is_dir():
        print(f"repository: {args.repository} does not exist yet (build it with `msk export`)")
        return 0
    if args.repair:
        outcome = recover(args.repository)
        print(f"repair: {outcome or 'nothing to repair'}")
    problems = repository_problems(args.repository)
    versions = describe_repository(args.repository)
    summary = ", ".join(f"{name} versions {v or 'none'}" for name, v in versions.items())
    if problems:
        print(f"repository: {args.repository} is INCONSISTENT ({summary})")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"repository: {args.repository} ok ({summary})")
    return 0
