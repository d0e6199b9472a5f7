"""Gateway settings: defaults, overridden by a config file (YAML/JSON), overridden by flags.

One dataclass so that every component receives exactly the settings it needs and the CLI, the
config file and the docs (docs/pacs.md) describe the same names.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
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


@dataclass
class GatewayConfig:
    """All gateway settings (see docs/pacs.md for what each one means in a hospital)."""

    triton_url: str | list[str]
    """Triton gRPC endpoint(s): one `HOST:PORT`, a comma-separated string or a list; stored
    as the list (requests are spread over them and fail over, `clients.failover`)."""
    destination: Destination | None = None
    """C-STORE destination (AET@HOST:PORT); this and/or `destination_dicomweb`."""
    destination_dicomweb: str | None = None
    """STOW-RS destination (the DICOMweb base URL); auth from MSK_DICOMWEB_* variables."""
    ae_title: str = DEFAULT_AE_TITLE
    host: str = "127.0.0.1"
    port: int = DEFAULT_DICOM_PORT
    allowed_calling_aes: list[str] = field(default_factory=list)
    """Senders allowed to store: `AET` or `AET@ADDRESS`. Empty = nobody, unless
    `accept_any_calling_ae` says otherwise (see `check_senders`)."""
    accept_any_calling_ae: bool = False
    require_called_aet: bool = True
    dicom_tls_cert: Path | None = None
    """PEM certificate (and `dicom_tls_key`) of the gateway: DICOM TLS on the SCP (and STOW-RS),
    and the client certificate for TLS deliveries. (`--tls-*` on `msk gateway` is gRPC TLS to
    Triton; these are the DICOM side.)"""
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = None
    """PEM CA bundle: senders must present a certificate it signed (mutual TLS), and a TLS
    destination must too."""
    destination_tls: bool = False
    """Deliver by C-STORE over DICOM TLS (verifying the destination with `dicom_tls_ca`)."""
    dicomweb_port: int | None = None
    """Serve STOW-RS (`POST /dicomweb/studies`) on this port, on `host`."""
    dicomweb_allowed_clients: list[str] = field(default_factory=list)
    """Client addresses allowed to STOW without a token (tokens: MSK_GATEWAY_STOW_TOKENS)."""
    stable_seconds: float = 30.0
    data_dir: Path = Path(".cache/gateway")
    max_attempts: int = 20
    backoff_base_s: float = 5.0
    backoff_max_s: float = 300.0
    poll_interval_s: float = 0.5
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    rules: Path | None = None
    heatmaps: bool = False
    """Also send each scored image's class-activation heatmap (a Segmentation)."""
    wrist: str = "auto"
    """'auto' = run wrist_detect for wrists when the server has it; 'off' never; 'on' require."""
    ood: str = "refuse"
    """Out-of-distribution policy (`msk.constants.OOD_POLICIES`): a PACS route sends whatever
    its rule matches, so by default an image unlike the model's reference set gets no call and
    the SR says "not assessed" with the reason; 'flag' calls it and records the OOD score."""
    audit_log: Path | None = None
    log_file: Path | None = None
    log_level: str = "INFO"
    dicom_timeout_s: float = 30.0
    artim_timeout_s: float = 5.0
    """Seconds a new DICOM connection has to finish its TLS handshake and send its
    A-ASSOCIATE-RQ (the PS3.8 ARTIM timer); then it is closed, so silent sockets cannot hold
    association slots."""
    max_associations: int = 32
    """Connections the SCP holds at once, in every state (before and after association)."""
    max_associations_per_peer: int = 8
    """Connections one peer address may hold at once; more are closed at accept."""
    reserved_associations: int = 16
    """Part of `max_associations` kept for addresses bound in `allowed_calling_aes`
    (`AET@ADDRESS`): every other address shares only the rest, so strangers cannot lock the
    PACS out. Titles without an address are known only after association: they share the rest
    (and with no address pinned at all there is no reserve)."""
    triton_tls_ca: Path | None = None
    triton_tls_cert: Path | None = None
    triton_tls_key: Path | None = None
    """gRPC TLS to Triton (`--tls-ca/--tls-cert/--tls-key`); none set = plain gRPC."""
    shared_queue: bool = False
    """Several gateway processes share `data_dir` (each batch is claimed by one of them)."""

    def __post_init__(self) -> None:
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
