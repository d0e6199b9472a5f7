"""`msk gateway`: the DICOM gateway between a hospital PACS and Triton (see docs/pacs.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from clients.gateway.config import add_arguments

    p = subparsers.add_parser(
        "gateway", help="run the DICOM gateway (C-STORE/STOW-RS in, Triton, TID 1500 SR out)",
        description="Receive radiographs from a PACS or modality (C-STORE SCP, C-ECHO, and "
        "STOW-RS with --dicomweb-port), score each study on Triton once no new instance "
        "arrived for --stable-seconds, and send a TID 1500 Measurement Report SR (optionally "
        "heatmap Segmentations) back by C-STORE to --destination and/or by STOW-RS to "
        "--destination-dicomweb. Only listed senders may store (--allowed-calling-ae), "
        "unless --accept-any-calling-ae. "
        "Studies wait in a durable on-disk queue: restarts and Triton/PACS outages only delay "
        "them. Settings come from flags, else from --config (YAML/JSON with the same names, "
        "dashes or underscores), else defaults. Research use only, not for diagnosis.",
    )
    p.add_argument("--config", type=Path, help="YAML or JSON file with gateway settings")
    p.add_argument("--ready-file", type=Path,
                   help="write this file once the gateway accepts associations")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings as JSON and exit")
    add_arguments(p)            # every setting's flag, from clients.gateway.config
    p.set_defaults(handler=run)



def run(args: argparse.Namespace) -> int:
    from clients.gateway.config import FIELD_NAMES, build_config, load_file
    from clients.gateway.phi import setup_logging
    from clients.gateway.queue import QueueLockedError
    from clients.gateway.service import run_gateway

    try:
        file_settings = load_file(args.config) if args.config else {}
        config = build_config(file_settings, {k: getattr(args, k) for k in FIELD_NAMES})
    except (ValueError, OSError) as exc:
        print(f"msk gateway: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.to_json(), sort_keys=True))
        return 0
    setup_logging(config.log_level, config.log_file)
    try:
        return run_gateway(config, ready_file=args.ready_file)
    except QueueLockedError as exc:
        print(f"msk gateway: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:    # settings only checkable at start (STOW-RS senders from env)
        print(f"msk gateway: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"msk gateway: cannot start ({exc})", file=sys.stderr)
        return 1
