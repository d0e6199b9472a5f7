"""`msk gateway`: the DICOM gateway between a hospital PACS and Triton (see docs/pacs.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from msk.constants import OOD_POLICIES


def register(subparsers: argparse._SubParsersAction) -> None:
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
    p.add_argument("--ae-title", help="this gateway's AE title (default MSKTRITON)")
    p.add_argument("--host", help="address to listen on, DICOM and STOW-RS (default 127.0.0.1; "
                   "0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, help="DICOM port to listen on (default 11112)")
    p.add_argument("--triton-url", action="append", metavar="HOST:PORT",
                   help="Triton gRPC endpoint; repeat it (or give a comma-separated list; in "
                   "--config: a list) for several replicas: requests are spread round-robin "
                   "and fail over to the others when one is down")
    p.add_argument("--destination", help="where results go by C-STORE: AET@HOST:PORT (the PACS)")
    p.add_argument("--destination-dicomweb", metavar="URL",
                   help="where results go by STOW-RS: the DICOMweb base URL (e.g. "
                   "https://pacs/dicom-web); auth from MSK_DICOMWEB_TOKEN (bearer) or "
                   "MSK_DICOMWEB_USER/MSK_DICOMWEB_PASSWORD (basic)")
    p.add_argument("--destination-tls", action="store_const", const=True,
                   help="C-STORE to --destination over DICOM TLS, verified with --dicom-tls-ca")
    p.add_argument("--allowed-calling-ae", dest="allowed_calling_aes", action="append",
                   metavar="AET[@ADDRESS]",
                   help="accept stores only from this calling AE title, optionally only from "
                   "this address (repeatable; required unless --accept-any-calling-ae)")
    p.add_argument("--accept-any-calling-ae", action="store_const", const=True,
                   help="accept stores from any calling AE and any STOW-RS client (not for "
                   "production)")
    p.add_argument("--dicom-tls-cert", type=Path,
                   help="PEM certificate of the gateway: the SCP (and STOW-RS) speak TLS only; "
                   "also the client certificate of TLS deliveries")
    p.add_argument("--dicom-tls-key", type=Path, help="PEM private key of --dicom-tls-cert")
    p.add_argument("--dicom-tls-ca", type=Path,
                   help="PEM CA bundle: senders must present a certificate it signed (mutual "
                   "TLS); TLS destinations are verified with it")
    p.add_argument("--dicomweb-port", type=int,
                   help="also accept STOW-RS (POST /dicomweb/studies) on this port (default off)")
    p.add_argument("--dicomweb-allowed-client", dest="dicomweb_allowed_clients",
                   action="append", metavar="ADDRESS",
                   help="client address allowed to STOW-RS without a token (repeatable; "
                   "tokens: MSK_GATEWAY_STOW_TOKENS, comma-separated)")
    p.add_argument("--no-require-called-aet", dest="require_called_aet", action="store_const",
                   const=False, help="accept associations addressed to any called AE title")
    p.add_argument("--stable-seconds", type=float,
                   help="a study is processed after this many seconds without a new instance "
                   "(default 30)")
    p.add_argument("--data-dir", type=Path,
                   help="durable queue folder (default .cache/gateway)")
    p.add_argument("--max-attempts", type=int,
                   help="attempts per stage before a study goes to dead/ (default 20)")
    p.add_argument("--backoff-base", dest="backoff_base_s", type=float,
                   help="first retry delay in seconds, doubled per attempt (default 5)")
    p.add_argument("--backoff-max", dest="backoff_max_s", type=float,
                   help="longest retry delay in seconds (default 300)")
    p.add_argument("--artim-timeout", dest="artim_timeout_s", type=float,
                   help="seconds a new DICOM connection has to finish its TLS handshake and "
                   "send its A-ASSOCIATE-RQ (the ARTIM timer); then it is closed (default 5)")
    p.add_argument("--max-associations", type=int,
                   help="connections the SCP holds at once, in any state (default 32)")
    p.add_argument("--max-associations-per-peer", type=int,
                   help="connections one source address may hold at once; more are closed "
                   "at accept (default 8)")
    p.add_argument("--reserved-associations", type=int,
                   help="part of --max-associations only senders pinned as AET@ADDRESS in "
                   "--allowed-calling-ae may use (default 16)")
    p.add_argument("--rules", type=Path,
                   help="routing rule table (JSON/YAML) put in front of the default rules")
    p.add_argument("--wrist", choices=("auto", "on", "off"),
                   help="run wrist_detect on wrists: auto = when the server has it (default)")
    p.add_argument("--ood", choices=OOD_POLICIES,
                   help="out-of-distribution policy: refuse (default) gives an image unlike the "
                   "model's reference set no call, and the SR says 'not assessed' with the "
                   "reason; flag calls it and records its OOD score")
    p.add_argument("--heatmaps", dest="heatmaps", action="store_const",
                   const=True, help="also send each scored image's heatmap as a Segmentation "
                   "a viewer overlays")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics on this port (default off)")
    p.add_argument("--metrics-host",
                   help="address for the metrics port (default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--audit-log", type=Path,
                   help="JSON-lines audit log (default DATA_DIR/audit.jsonl)")
    p.add_argument("--log-file", type=Path, help="also write logs to this file")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="log level (default INFO)")
    p.add_argument("--shared-queue", action="store_const", const=True,
                   help="share --data-dir with other gateway processes (replicas on one "
                   "ReadWriteMany volume): each study is scored and delivered by exactly one")
    p.add_argument("--ready-file", type=Path,
                   help="write this file once the gateway accepts associations")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings as JSON and exit")
    tls = p.add_argument_group("TLS to Triton's gRPC endpoint")
    tls.add_argument("--tls-ca", dest="triton_tls_ca", type=Path, metavar="PEM",
                     help="connect to Triton with TLS, verifying it against this CA (PEM)")
    tls.add_argument("--tls-cert", dest="triton_tls_cert", type=Path, metavar="PEM",
                     help="client certificate (PEM) for mutual TLS to Triton; needs --tls-key")
    tls.add_argument("--tls-key", dest="triton_tls_key", type=Path, metavar="PEM",
                     help="client private key (PEM) for mutual TLS to Triton; needs --tls-cert")
    p.set_defaults(handler=run)


SETTINGS = ("ae_title", "host", "port", "triton_url", "destination", "destination_dicomweb",
            "destination_tls", "allowed_calling_aes", "accept_any_calling_ae", "dicom_tls_cert",
            "dicom_tls_key", "dicom_tls_ca", "dicomweb_port", "dicomweb_allowed_clients",
            "require_called_aet", "stable_seconds", "data_dir", "max_attempts",
            "backoff_base_s", "backoff_max_s", "artim_timeout_s", "max_associations",
            "max_associations_per_peer", "reserved_associations", "rules", "wrist", "ood",
            "heatmaps", "metrics_port", "metrics_host", "audit_log", "log_file", "log_level",
            "triton_tls_ca", "triton_tls_cert", "triton_tls_key",
            "shared_queue")


def run(args: argparse.Namespace) -> int:
    from clients.gateway.config import build_config, load_file
    from clients.gateway.phi import setup_logging
    from clients.gateway.queue import QueueLockedError
    from clients.gateway.service import run_gateway

    try:
        file_settings = load_file(args.config) if args.config else {}
        config = build_config(file_settings, {k: getattr(args, k) for k in SETTINGS})
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
