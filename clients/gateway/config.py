"""Gateway settings: defaults, overridden by a config file (YAML/JSON), overridden by flags.

One dataclass so that every component receives exactly the settings it needs and the CLI, the
config file and the docs (docs/pacs.md) describe the same names.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from msk.constants import DEFAULT_AE_TITLE, DEFAULT_DICOM_PORT

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


@dataclass
class GatewayConfig:
    """All gateway settings (see docs/pacs.md for what each one means in a hospital)."""

    triton_url: str
    destination: Destination
    ae_title: str = DEFAULT_AE_TITLE
    host: str = "0.0.0.0"
    port: int = DEFAULT_DICOM_PORT
    allowed_calling_aes: list[str] = field(default_factory=list)
    """Empty = accept any calling AE (restrict this in production)."""
    require_called_aet: bool = True
    stable_seconds: float = 30.0
    data_dir: Path = Path(".cache/gateway")
    max_attempts: int = 20
    backoff_base_s: float = 5.0
    backoff_max_s: float = 300.0
    poll_interval_s: float = 0.5
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    rules: Path | None = None
    secondary_capture: bool = False
    wrist: str = "auto"
    """'auto' = run wrist_detect for wrists when the server has it; 'off' never; 'on' require."""
    audit_log: Path | None = None
    log_file: Path | None = None
    log_level: str = "INFO"
    dicom_timeout_s: float = 30.0
    triton_tls_ca: Path | None = None
    triton_tls_cert: Path | None = None
    triton_tls_key: Path | None = None
    """gRPC TLS to Triton (`--tls-ca/--tls-cert/--tls-key`); none set = plain gRPC."""
    shared_queue: bool = False
    """Several gateway processes share `data_dir` (each batch is claimed by one of them)."""

    def __post_init__(self) -> None:
        self.ae_title = check_ae_title(self.ae_title)
        self.allowed_calling_aes = [check_ae_title(a, "allowed calling AE title")
                                    for a in self.allowed_calling_aes]
        if isinstance(self.destination, str):
            self.destination = Destination.parse(self.destination)
        self.data_dir = Path(self.data_dir)
        self.rules = Path(self.rules) if self.rules else None
        self.audit_log = Path(self.audit_log) if self.audit_log else self.data_dir / "audit.jsonl"
        self.log_file = Path(self.log_file) if self.log_file else None
        for name in ("triton_tls_ca", "triton_tls_cert", "triton_tls_key"):
            value = getattr(self, name)
            setattr(self, name, Path(value) if value else None)
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.stable_seconds < 0 or self.backoff_base_s <= 0 or self.max_attempts < 1:
            raise ValueError("stable_seconds must be >= 0, backoff_base_s > 0, max_attempts >= 1")
        if self.wrist not in ("auto", "on", "off"):
            raise ValueError(f"wrist must be auto, on or off, not {self.wrist!r}")

    def triton_tls(self):
        """The gRPC TLS settings for Triton (clients.tls.GrpcTls) or None."""
        from clients.tls import GrpcTls

        if not (self.triton_tls_ca or self.triton_tls_cert or self.triton_tls_key):
            return None
        return GrpcTls(ca=self.triton_tls_ca, cert=self.triton_tls_cert, key=self.triton_tls_key)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failed attempts (exponential, capped)."""
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempts - 1))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["destination"] = str(self.destination)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


FIELD_NAMES = {f.name for f in fields(GatewayConfig)}


def load_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML or JSON file; keys are GatewayConfig field names (dashes allowed)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:
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
    missing = [k for k in ("triton_url", "destination") if not merged.get(k)]
    if missing:
        raise ValueError(f"gateway settings missing: {missing} (give them as flags or in the "
                         "config file)")
    return GatewayConfig(**merged)
