"""Audit log: one JSON line per study outcome (scored, delivered, skipped, retry, dead).

Answers "what did the AI do with this study, with which models, and what did it send back"
without PHI: the study is identified by its UID tag (see `phi.uid_tag`), results by their own
generated UIDs (which are ours, not the patient's). Lines are appended and fsynced so an entry
survives a crash right after it was written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any

from clients.rows import common_fields


class AuditLog:
    """Append-only JSON-lines file, safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, event: str, *, input: str, error: str | None = None,
               error_reason: str | None = None, versions: dict[str, str] | None = None,
               latency_s: float | None = None, **fields: Any) -> dict[str, Any]:
        """One entry: time, event, the shared row fields (`clients.rows`; `input` is the queued
        batch, which names the study by its UID tag), then the event's own fields."""
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                 "event": event,
                 **common_fields(input, error=error, error_reason=error_reason,
                                 versions=versions, latency_s=latency_s),
                 **fields}
        line = json.dumps(entry, sort_keys=True, default=str)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """All entries so far (for tests and `msk gateway --audit-tail`-style inspection)."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
