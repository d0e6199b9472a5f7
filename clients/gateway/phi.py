"""Logging without protected health information.

Gateway code never formats patient names, IDs or birth dates into log messages; UIDs are not
names but can still link a log to a patient record, so they are logged only as a short hash
(`uid_tag`). As a second line of defence every handler installed by `setup_logging` rewrites
anything shaped like a DICOM UID into its tag, which also covers third-party messages
(pynetdicom logs Affected SOP Instance UIDs).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from pathlib import Path

UID_PATTERN = re.compile(
    r"(?<![\w.])(?=[0-9.]{10,})[0-2](?:\.(?:0|[1-9][0-9]*)){2,}(?![\w.])")
"""Dotted numeric strings of at least three components and ten characters starting with a
single-digit root arc (0, 1 or 2), as every DICOM UID does (2.25.<uuid> has three); short
version numbers (2.51.0) and dotted-quad addresses such as 127.0.0.1 do not match."""


def uid_tag(uid: object) -> str:
    """Stable, non-reversible short form of a UID for logs: 'uid:' + 12 hex of SHA-256."""
    return "uid:" + hashlib.sha256(str(uid).encode()).hexdigest()[:12]


def redact(text: str) -> str:
    """Replace every UID-shaped substring with its tag."""
    return UID_PATTERN.sub(lambda m: uid_tag(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """Renders the message once, redacted, so handlers downstream only see the safe text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # why: a broken %-format in someone's message: keep the template
            message = str(record.msg)
        if record.name == "py.warnings":
            message = _withhold_warning_text(message)
        record.msg = redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _withhold_warning_text(message: str) -> str:
    """Library warnings quote element values (pydicom: "Invalid value ... for VR PN"), so
    only where and what kind of warning is kept: 'file:line: Category'."""
    first = message.splitlines()[0] if message else ""
    parts = first.split(": ", 2)
    where_and_kind = ": ".join(parts[:2]) if len(parts) >= 2 else "warning"
    return f"{where_and_kind} (message withheld: it may quote patient data)"


def setup_logging(level: str = "INFO", log_file: str | Path | None = None) -> None:
    """Root logging to stderr (and optionally a file), redacted; pynetdicom kept at WARNING
    unless DEBUG is asked for (its debug dumps include identifiers of the exchanged objects)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)   # warnings.warn output goes through the filter too
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
