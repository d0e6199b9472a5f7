"""Gateway settings: defaults, overridden by a config file (YAML/JSON), overridden by flags.

One dataclass so that every component receives exactly the settings it needs and the CLI, the
config file and the docs (docs/pacs.md) describe the same names.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from clients.failover import url_list
from msk.backoff import backoff_delay
from msk.constants import DEFAULT_AE_TITLE, DEFAULT_DICOM_PORT, OOD_POLICIES

AE_TITLE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
"""PS3.5: AE titles are 1-16 characters of the default repertoire without backslash."""


def check_ae_title(value: str, what: str = "AE title") -> str:
    value = value.strip()
    if not AE_TITLE_PATTERN.match(value):
        raise ValueError(f"{what} {value!r} is not a valid DICOM AE title (1-16 printable "
                         "ASCII characters, no backslash)")
    return value


@dataclass(frozen=True)
class Destination:
    """Where results are sent by C-STORE: `AET@HOST:PORT`."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)",
                             text.strip())
        if not match:
            raise ValueError(f"destination {text!r} is not of the form AET@HOST:PORT")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ValueError(f"destination {text!r}: port {port} out of range")
        return cls(check_ae_title(match["aet"], "destination AE title"),
                   match["host"].strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class CallingPeer:
    """One allowed sender: an AE title, optionally bound to an address (`AET@ADDRESS`)."""

    ae_title: str
    address: str | None = None

    @classmethod
    def parse(cls, text: str) -> CallingPeer:
        aet, _, address = text.strip().partition("@")
        return cls(check_ae_title(aet, "allowed calling AE title"), address.strip("[]") or None)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.address}" if self.address else self.ae_title


TRITON_TLS_GROUP = "TLS to Triton's gRPC endpoint"


def setting(default: Any, flag: str, help: str, **argparse_kwargs: Any):  # noqa: A002
    """A GatewayConfig field and its command-line flag: the one description of a setting.
    `default` may be a factory (`list`); `argparse_kwargs` go to `add_argument` (type, action,
    choices, metavar; `group` names an argument group)."""
    meta = {"flag": flag, "help": help, **argparse_kwargs}
    if callable(default) and default in (list, dict):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class GatewayConfig:
    """All gateway settings (see docs/pacs.md for what each one means in a hospital).

    The one description of every setting: each field's metadata (`setting`) gives its flag and
    help, from which `msk gateway`'s flags (`add_arguments`), the config-file keys (the field
    names), the defaults shown in `--help`, `--print-config` (`to_json`) and the validation
    (`__post_init__`) all come. Built in Python it is as closed as the CLI: storing needs an
    allow-list or `accept_any_calling_ae` (`check_senders`, run by the SCP at start)."""

    triton_url: str | list[str] = setting(
        None, "--triton-url", "Triton gRPC endpoint; repeat it (or give a comma-separated list; "
        "in --config: a list) for several replicas: requests are spread round-robin and fail "
        "over to the others when one is down", action="append", metavar="HOST:PORT")
    destination: Destination | None = setting(
        None, "--destination", "where results go by C-STORE: AET@HOST:PORT (the PACS)")
    destination_dicomweb: str | None = setting(
        None, "--destination-dicomweb", "where results go by STOW-RS: the DICOMweb base URL "
        "(e.g. https://pacs/dicom-web); auth from MSK_DICOMWEB_TOKEN (bearer) or "
        "MSK_DICOMWEB_USER/MSK_DICOMWEB_PASSWORD (basic)", metavar="URL")
    ae_title: str = setting(DEFAULT_AE_TITLE, "--ae-title", "this gateway's AE title")
    host: str = setting("127.0.0.1", "--host", "address to listen on, DICOM and STOW-RS "
                        "(0.0.0.0 = every interface)")
    port: int = setting(DEFAULT_DICOM_PORT, "--port", "DICOM port to listen on", type=int)
    allowed_calling_aes: list[str] = setting(
        list, "--allowed-calling-ae", "accept stores only from this calling AE title, "
        "optionally only from this address (repeatable; required unless "
        "--accept-any-calling-ae)", action="append", metavar="AET[@ADDRESS]")
    accept_any_calling_ae: bool = setting(
        False, "--accept-any-calling-ae", "accept stores from any calling AE and any STOW-RS "
        "client (not for production)", action="store_const", const=True)
    require_called_aet: bool = setting(
        True, "--no-require-called-aet", "accept associations addressed to any called AE title",
        action="store_const", const=False)
    dicom_tls_cert: Path | None = setting(
        None, "--dicom-tls-cert", "PEM certificate of the gateway: the SCP (and STOW-RS) speak "
        "TLS only; also the client certificate of TLS deliveries", type=Path)
    dicom_tls_key: Path | None = setting(None, "--dicom-tls-key",
                                         "PEM private key of --dicom-tls-cert", type=Path)
    dicom_tls_ca: Path | None = setting(
        None, "--dicom-tls-ca", "PEM CA bundle: senders must present a certificate it signed "
        "(mutual TLS); TLS destinations are verified with it", type=Path)
    destination_tls: bool = setting(
        False, "--destination-tls", "C-STORE to --destination over DICOM TLS, verified with "
        "--dicom-tls-ca", action="store_const", const=True)
    dicomweb_port: int | None = setting(
        None, "--dicomweb-port", "also accept STOW-RS (POST /dicomweb/studies) on this port",
        type=int)
    dicomweb_allowed_clients: list[str] = setting(
        list, "--dicomweb-allowed-client", "client address allowed to STOW-RS without a token "
        "(repeatable; tokens: MSK_GATEWAY_STOW_TOKENS, comma-separated)", action="append",
        metavar="ADDRESS")
    stable_seconds: float = setting(
        30.0, "--stable-seconds", "a study is processed after this many seconds without a new "
        "instance", type=float)
    data_dir: Path = setting(Path(".cache/gateway"), "--data-dir", "durable queue folder",
                             type=Path)
    max_attempts: int = setting(20, "--max-attempts",
                                "attempts per stage before a study goes to dead/", type=int)
    backoff_base_s: float = setting(5.0, "--backoff-base", "first retry delay in seconds, "
                                    "doubled per attempt", type=float)
    backoff_max_s: float = setting(300.0, "--backoff-max", "longest retry delay in seconds",
                                   type=float)
    poll_interval_s: float = setting(0.5, "--poll-interval", "seconds between looks at the "
                                     "queue for studies that are due", type=float)
    metrics_port: int | None = setting(None, "--metrics-port",
                                       "serve Prometheus metrics on this port", type=int)
    metrics_host: str = setting("127.0.0.1", "--metrics-host", "address for the metrics port "
                                "(0.0.0.0 in a container)")
    rules: Path | None = setting(None, "--rules", "routing rule table (JSON/YAML) put in front "
                                 "of the default rules", type=Path)
    heatmaps: bool = setting(False, "--heatmaps", "also send each scored image's heatmap as a "
                             "Segmentation a viewer overlays", action="store_const", const=True)
    wrist: str = setting("auto", "--wrist", "run wrist_detect on wrists: auto = when the server "
                         "has it; on = require it; off = never", choices=("auto", "on", "off"))
    ood: str = setting("refuse", "--ood", "out-of-distribution policy: refuse gives an image "
                       "unlike the model's reference set no call, and the SR says 'not "
                       "assessed' with the reason (a PACS route sends whatever its rule "
                       "matches); flag calls it and records its OOD score", choices=OOD_POLICIES)
    audit_log: Path | None = setting(None, "--audit-log", "JSON-lines audit log (default "
                                     "DATA_DIR/audit.jsonl)", type=Path)
    log_file: Path | None = setting(None, "--log-file", "also write logs to this file", type=Path)
    log_level: str = setting("INFO", "--log-level", "log level",
                             choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    dicom_timeout_s: float = setting(
        30.0, "--dicom-timeout", "seconds a DICOM peer may stay silent inside an association "
        "(DIMSE and network timeouts), for the SCP and for deliveries", type=float)
    artim_timeout_s: float = setting(
        5.0, "--artim-timeout", "seconds a new DICOM connection has to finish its TLS handshake "
        "and send its A-ASSOCIATE-RQ (the PS3.8 ARTIM timer); then it is closed, so silent "
        "sockets cannot hold association slots", type=float)
    max_associations: int = setting(
        32, "--max-associations", "connections the SCP holds at once, in any state (before and "
        "after association)", type=int)
    max_associations_per_peer: int = setting(
        8, "--max-associations-per-peer", "connections one source address may hold at once; "
        "more are closed at accept", type=int)
    reserved_associations: int = setting(
        16, "--reserved-associations", "part of --max-associations only senders pinned as "
        "AET@ADDRESS in --allowed-calling-ae may use: every other address shares only the "
        "rest, so strangers cannot lock the PACS out", type=int)
    triton_tls_ca: Path | None = setting(
        None, "--tls-ca", "connect to Triton with TLS, verifying it against this CA (PEM)",
        type=Path, metavar="PEM", group=TRITON_TLS_GROUP)
    triton_tls_cert: Path | None = setting(
        None, "--tls-cert", "client certificate (PEM) for mutual TLS to Triton; needs "
        "--tls-key", type=Path, metavar="PEM", group=TRITON_TLS_GROUP)
    triton_tls_key: Path | None = setting(
        None, "--tls-key", "client private key (PEM) for mutual TLS to Triton; needs --tls-cert",
        type=Path, metavar="PEM", group=TRITON_TLS_GROUP)
    shared_queue: bool = setting(
        False, "--shared-queue", "share --data-dir with other gateway processes (replicas on "
        "one ReadWriteMany volume): each study is scored and delivered by exactly one",
        action="store_const", const=True)

    def __post_init__(self) -> None:
        if not self.triton_url:
            raise ValueError("gateway settings missing: ['triton_url'] (give them as flags or "
                             "in the config file)")
        self.triton_url = url_list(self.triton_url)
        self.ae_title = check_ae_title(self.ae_title)
        self.allowed_calling_aes = [str(CallingPeer.parse(a)) for a in self.allowed_calling_aes]
        if isinstance(self.destination, str):
            self.destination = Destination.parse(self.destination)
        if self.destination is None and not self.destination_dicomweb:
            raise ValueError("no destination: give --destination AET@HOST:PORT and/or "
                             "--destination-dicomweb URL")
        if self.destination_dicomweb and not re.match(r"^https?://[^/\s]+",
                                                      self.destination_dicomweb):
            raise ValueError(f"destination_dicomweb {self.destination_dicomweb!r} is not an "
                             "http(s):// URL")
        for name in ("dicom_tls_cert", "dicom_tls_key", "dicom_tls_ca"):
            value = getattr(self, name)
            setattr(self, name, Path(value) if value else None)
        if bool(self.dicom_tls_cert) != bool(self.dicom_tls_key):
            raise ValueError("dicom_tls_cert and dicom_tls_key go together (the gateway's "
                             "certificate and its private key, PEM)")
        if self.destination_tls and not self.dicom_tls_ca:
            raise ValueError("destination_tls needs dicom_tls_ca (the CA that signed the "
                             "destination's certificate)")
        if self.dicomweb_port is not None and not 0 < int(self.dicomweb_port) < 65536:
            raise ValueError(f"dicomweb_port {self.dicomweb_port} out of range")
        self.data_dir = Path(self.data_dir)
        self.rules = Path(self.rules) if self.rules else None
        self.audit_log = Path(self.audit_log) if self.audit_log else self.data_dir / "audit.jsonl"
        self.log_file = Path(self.log_file) if self.log_file else None
        for name in ("triton_tls_ca", "triton_tls_cert", "triton_tls_key"):
            value = getattr(self, name)
            setattr(self, name, Path(value) if value else None)
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.ood not in OOD_POLICIES:
            raise ValueError(f"ood {self.ood!r} must be one of {', '.join(OOD_POLICIES)}")
        if self.stable_seconds < 0 or self.backoff_base_s <= 0 or self.max_attempts < 1:
            raise ValueError("stable_seconds must be >= 0, backoff_base_s > 0, max_attempts >= 1")
        if not self.dicom_timeout_s > 0 or not self.poll_interval_s > 0:
            raise ValueError("dicom_timeout_s and poll_interval_s must be > 0 seconds")
        if self.wrist not in ("auto", "on", "off"):
            raise ValueError(f"wrist must be auto, on or off, not {self.wrist!r}")
        self._check_connection_limits()

    def _check_connection_limits(self) -> None:
        """The SCP's admission limits must leave room for someone: a zero limit, or a reserve
        that takes every slot, would be a gateway nobody (or only pinned senders) can reach
        without saying so."""
        names = ("max_associations", "max_associations_per_peer", "reserved_associations")
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, not {value!r}")
        if isinstance(self.artim_timeout_s, bool) or not (
                isinstance(self.artim_timeout_s, int | float)
                and 0 < self.artim_timeout_s < math.inf):
            raise ValueError(f"artim_timeout_s must be a number of seconds > 0, not "
                             f"{self.artim_timeout_s!r}")
        if self.max_associations < 1:
            raise ValueError(f"max_associations must be >= 1, not {self.max_associations}")
        if not 1 <= self.max_associations_per_peer <= self.max_associations:
            raise ValueError(f"max_associations_per_peer must be 1..max_associations "
                             f"({self.max_associations}), not {self.max_associations_per_peer}")
        if not 0 <= self.reserved_associations < self.max_associations:
            raise ValueError(f"reserved_associations must be 0..max_associations - 1 "
                             f"({self.max_associations - 1}), not {self.reserved_associations}")

    def triton_tls(self):
        """The gRPC TLS settings for Triton (clients.tls.GrpcTls) or None."""
        from clients.tls import GrpcTls

        if not (self.triton_tls_ca or self.triton_tls_cert or self.triton_tls_key):
            return None
        return GrpcTls(ca=self.triton_tls_ca, cert=self.triton_tls_cert, key=self.triton_tls_key)

    @property
    def calling_peers(self) -> list[CallingPeer]:
        return [CallingPeer.parse(a) for a in self.allowed_calling_aes]

    def check_senders(self) -> None:
        """Storing needs an allow-list or an explicit opt-out: the gateway is never open by
        default (it would score and answer anything anyone sends)."""
        if not self.allowed_calling_aes and not self.accept_any_calling_ae:
            raise ValueError("no allowed senders: give --allowed-calling-ae AET (or AET@ADDRESS, "
                             "repeatable) or, knowingly, --accept-any-calling-ae")

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failed attempts (exponential, capped)."""
        return backoff_delay(attempts - 1, self.backoff_base_s, self.backoff_max_s)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["destination"] = str(self.destination) if self.destination else None
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


FIELD_NAMES = {f.name for f in fields(GatewayConfig)}


def _shown_default(f) -> str:
    default = f.default if f.default_factory is MISSING else f.default_factory()  # type: ignore[misc]
    if default in (None, [], False) or f.metadata.get("action") == "store_const":
        return ""
    return f" (default {default})"


def add_arguments(parser) -> None:
    """One flag per GatewayConfig field, from its `setting` metadata; defaults from the field
    (argparse's own default stays None, meaning "not given": the config file may set it)."""
    groups: dict[str, Any] = {}
    for f in fields(GatewayConfig):
        meta = dict(f.metadata)
        flag, text = meta.pop("flag"), meta.pop("help")
        group = meta.pop("group", None)
        if meta.get("action") != "store_const":
            meta.setdefault("metavar", flag.removeprefix("--").upper().replace("-", "_"))
        target = parser if group is None else groups.setdefault(
            group, parser.add_argument_group(group))
        target.add_argument(flag, dest=f.name, help=text + _shown_default(f), **meta)


def load_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML or JSON file; keys are GatewayConfig field names (dashes allowed)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"gateway config {path}: cannot parse ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"gateway config {path}: expected a mapping of settings")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - FIELD_NAMES)
    if unknown:
        raise ValueError(f"gateway config {path}: unknown settings {unknown}; known: "
                         f"{sorted(FIELD_NAMES)}")
    return data


def build_config(file_settings: dict[str, Any], overrides: dict[str, Any]) -> GatewayConfig:
    """Defaults < file < overrides (None in overrides = not given)."""
    merged = {**file_settings, **{k: v for k, v in overrides.items() if v is not None}}
    missing = [k for k in ("triton_url",) if not merged.get(k)]
    if missing:
        raise ValueError(f"gateway settings missing: {missing} (give them as flags or in the "
                         "config file)")
    config = GatewayConfig(**merged)
    config.check_senders()
    return config
