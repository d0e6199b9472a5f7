"""Result files of `msk score`: CSV or JSON lines, chosen by extension, written row by row.

Why append-and-flush per row: a run killed at any point keeps every row already scored, and
`--resume` reads the file back to skip them. A kill can leave half a line at the end; `open_sink`
cuts the file back to its last complete line before appending, so the file stays parseable.
Rows are written in completion order (concurrent requests finish out of order); `input` is the
key. Rows start with the shared row fields (`clients.rows`). A CSV written with other columns (a
version that had fewer, such as the OOD fields) is rewritten with the current header when it is
resumed, so one file has one header. Nothing has been released, so files from before the shared
row schema (`path`, `latency_ms`) are not read (no compatibility shims before 1.0).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, TextIO

from clients.errors import RETRYABLE
from clients.rows import SHARED_FIELDS, TRUST_FIELDS
from msk.constants import MURA_MEMBERS

TRANSIENT_REASONS = RETRYABLE
"""Error reasons that say nothing about the image: `--resume` scores these rows again."""

BASE_COLUMNS = ("input", "study", "body_part", "label", "probability", "threshold", "abnormal",
                "default_threshold", *TRUST_FIELDS)
TAIL_COLUMNS = ("versions", "weights", "latency_s", "attempts", "error", "error_reason", "notice")


def member_column(member: str) -> str:
    return f"p_{member}"


def csv_columns(members: Iterable[str] = MURA_MEMBERS) -> list[str]:
    return [*BASE_COLUMNS, *(member_column(m) for m in members), *TAIL_COLUMNS]


def is_final(row: dict[str, Any]) -> bool:
    """A row that a resumed run keeps: a result, or an error caused by the input itself."""
    return not row.get("error") or row.get("error_reason") not in TRANSIENT_REASONS


class Sink(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _flatten(row: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    flat = {k: row.get(k) for k in columns}
    for member, value in (row.get("members") or {}).items():
        if member_column(member) in flat:
            flat[member_column(member)] = value
    if row.get("versions") is not None:
        flat["versions"] = json.dumps(row["versions"], sort_keys=True, separators=(",", ":"))
    return {k: ("" if v is None else v) for k, v in flat.items()}


def _unflatten(flat: dict[str, str]) -> dict[str, Any]:
    """A CSV row back into the JSON form (numbers parsed, members regrouped)."""
    def num(value: str | None) -> float | None:
        return float(value) if value not in (None, "") else None

    row: dict[str, Any] = {
        "input": flat.get("input", ""),
        "study": flat.get("study") or None,
        "body_part": flat.get("body_part") or None,
        "label": int(float(flat["label"])) if flat.get("label") else None,
        "probability": num(flat.get("probability")),
        "threshold": num(flat.get("threshold")),
        "default_threshold": num(flat.get("default_threshold")),
        "abnormal": {"True": True, "False": False}.get(flat.get("abnormal") or ""),
        "ood_score": num(flat.get("ood_score")),
        "in_distribution": {"True": True, "False": False}.get(flat.get("in_distribution") or ""),
        "ood_threshold": num(flat.get("ood_threshold")),
        "member_spread": num(flat.get("member_spread")),
        "members": {k[2:]: num(v) for k, v in flat.items() if k.startswith("p_") and v},
        "versions": json.loads(flat["versions"]) if flat.get("versions") else None,
        "weights": flat.get("weights") or None,
        "latency_s": num(flat.get("latency_s")),
        "attempts": int(flat["attempts"]) if flat.get("attempts") else None,
        "error": flat.get("error") or None,
        "error_reason": flat.get("error_reason") or None,
        "notice": flat.get("notice") or None,
    }
    # The shared fields lead every row (docs/outputs.md).
    return {**{k: row.get(k) for k in SHARED_FIELDS}, **row}


def row_key(row: dict[str, Any]) -> str:
    """The key of a row: its input as `msk score` expanded it."""
    return str(row["input"])


class JsonlSink:
    def __init__(self, handle: TextIO, close_handle: bool = True) -> None:
        self._handle = handle
        self._close = close_handle

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, separators=(",", ":")) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._close:
            self._handle.close()


class CsvSink:
    def __init__(self, handle: TextIO, write_header: bool, columns: list[str]) -> None:
        self._handle = handle
        self._columns = columns
        self._writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if write_header:
            self._writer.writeheader()
            handle.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow(_flatten(row, self._columns))
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    raise ValueError(f"{path}: output must end in .csv, .jsonl or .ndjson")


def _cut_partial_tail(path: Path) -> None:
    """Drop a half-written last line left by a killed run."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as handle:
            handle.truncate(cut)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete row of an existing output file (JSON form); [] if it does not exist."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    fmt = output_format(path)
    text = path.read_text(encoding="utf-8")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    if fmt == "jsonl":
        rows = []
        for line in complete.splitlines():
            if line.strip():
                rows.append(json.loads(line))
        return rows
    return [_unflatten(r) for r in csv.DictReader(io.StringIO(complete))]


def open_sink(path: Path | None, resume: bool) -> tuple[Sink | None, dict[str, dict[str, Any]]]:
    """Open the output for appending (resume) or writing; return it and the rows to keep.

    On resume, rows with transient errors are dropped from the file (rewritten atomically) so
    that scoring them again still leaves each image exactly once in the output.
    """
    if path is None:
        return None, {}
    fmt = output_format(path)
    kept: dict[str, dict[str, Any]] = {}
    if resume and path.exists():
        _cut_partial_tail(path)
        rows = read_rows(path)
        for row in rows:
            if is_final(row):
                kept[row_key(row)] = row
        if len(kept) != len(rows) or _other_columns(path, fmt):
            _rewrite(path, fmt, list(kept.values()))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    fresh = path.stat().st_size == 0
    handle = path.open("a", encoding="utf-8", newline="")
    if fmt == "jsonl":
        return JsonlSink(handle), kept
    return CsvSink(handle, write_header=fresh, columns=csv_columns()), kept


def _other_columns(path: Path, fmt: str) -> bool:
    """True for a CSV whose header is not today's (JSON lines name their fields per row)."""
    if fmt != "csv":
        return False
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    return bool(first.strip()) and next(csv.reader([first])) != csv_columns()


def _rewrite(path: Path, fmt: str, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        sink: Sink = (JsonlSink(handle, close_handle=False) if fmt == "jsonl"
                      else CsvSink(handle, write_header=True, columns=csv_columns()))
        for row in rows:
            sink.write(row)
    os.replace(tmp, path)


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write a whole table at once (study aggregates), CSV or JSON lines by extension."""
    fmt = output_format(path)
    with path.open("w", encoding="utf-8", newline="") as handle:
        if fmt == "jsonl":
            for row in rows:
                handle.write(json.dumps(row, separators=(",", ":")) + "\n")
        else:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def stdout_sink() -> JsonlSink:
    return JsonlSink(sys.stdout, close_handle=False)
