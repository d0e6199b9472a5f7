"""`clients.outputs`: result files survive a kill and `--resume` keeps each image exactly once."""

from __future__ import annotations

import csv
import json

import pytest

from clients.outputs import csv_columns, open_sink, read_rows
from clients.rows import SHARED_FIELDS, common_fields
from msk import RESEARCH_USE_NOTICE


def _row(path: str, error: str | None = None, reason: str | None = None) -> dict:
    return {**common_fields(path, error=error, error_reason=reason, latency_s=0.0035,
                            versions=None if error else {"densenet169_a": "1"}),
            "study": None, "label": None, "probability": None if error else 0.25,
            "threshold": None if error else 0.5, "abnormal": None if error else False,
            "body_part": None, "members": None if error else {"densenet169_a": 0.2},
            "weights": None, "attempts": 1}


def _old_row(path: str, error: str | None = None, reason: str | None = None) -> dict:
    """A row as `msk score` wrote it before the shared schema (`path`, `latency_ms`)."""
    row = _row(path, error, reason)
    row["path"] = row.pop("input")
    row["latency_ms"] = 1000 * row.pop("latency_s")
    del row["notice"]
    return row


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_cuts_partial_line_and_drops_transient_errors(tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    sink, kept = open_sink(out, resume=False)
    assert kept == {}
    sink.write(_row("a.png"))
    sink.write(_row("b.png", "b.png: server unavailable for 300 s", "server_unavailable"))
    sink.write(_row("c.png", "c.png: not a readable image", "unreadable_image"))
    sink.close()
    with out.open("a") as handle:   # a run killed in the middle of writing a row
        handle.write('{"input": "d.png", "probab' if suffix == ".jsonl" else "d.png,,,0.")

    sink, kept = open_sink(out, resume=True)
    assert sorted(kept) == ["a.png", "c.png"]          # b is scored again, d was never complete
    sink.write(_row("b.png"))
    sink.write(_row("d.png"))
    sink.close()
    rows = read_rows(out)
    assert sorted(r["input"] for r in rows) == ["a.png", "b.png", "c.png", "d.png"]
    assert next(r for r in rows if r["input"] == "a.png")["members"]["densenet169_a"] == 0.2
    assert next(r for r in rows if r["input"] == "c.png")["error_reason"] == "unreadable_image"
    assert all(r["notice"] == RESEARCH_USE_NOTICE for r in rows)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_reads_a_file_written_before_the_shared_schema(tmp_path, suffix):
    """Old files (key `path`, `latency_ms`) still resume: their kept rows are rewritten in the
    new form before new rows are appended, so the file has one schema afterwards."""
    out = tmp_path / f"old{suffix}"
    old = [_old_row("a.png"), _old_row("b.png", "b.png: server unavailable", "server_unavailable")]
    if suffix == ".jsonl":
        out.write_text("".join(json.dumps(r) + "\n" for r in old))
    else:
        columns = ["path", "study", "body_part", "label", "probability", "threshold", "abnormal",
                   "versions", "weights", "latency_ms", "attempts", "error", "error_reason"]
        with out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for r in old:
                r["versions"] = json.dumps(r["versions"]) if r["versions"] else None
                writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    sink, kept = open_sink(out, resume=True)
    assert sorted(kept) == ["a.png"]
    sink.write(_row("b.png"))
    sink.close()
    rows = read_rows(out)
    assert sorted(r["input"] for r in rows) == ["a.png", "b.png"]
    assert all("path" not in r and r["latency_s"] == 0.0035 for r in rows)
    if suffix == ".csv":
        assert out.read_text().splitlines()[0].split(",") == csv_columns()
    else:
        assert all("input" in json.loads(line) for line in out.read_text().splitlines())


def test_rows_start_with_the_shared_fields_in_both_formats(tmp_path):
    for suffix in (".jsonl", ".csv"):
        out = tmp_path / f"s{suffix}"
        sink, _ = open_sink(out, resume=False)
        sink.write(_row("a.png"))
        sink.write(_row("c.png", "c.png: not a readable image", "unreadable_image"))
        sink.close()
        for row in read_rows(out):
            assert set(SHARED_FIELDS) <= set(row), (suffix, row)
            assert row["notice"] == RESEARCH_USE_NOTICE
    assert set(SHARED_FIELDS) <= set(csv_columns())


def test_csv_header_once_and_versions_as_json(tmp_path):
    out = tmp_path / "s.csv"
    sink, _ = open_sink(out, resume=False)
    sink.write(_row("a.png"))
    sink.close()
    sink, _ = open_sink(out, resume=True)
    sink.write(_row("b.png"))
    sink.close()
    lines = out.read_text().splitlines()
    assert lines[0].split(",") == csv_columns()
    assert len(lines) == 3
    assert read_rows(out)[1]["versions"] == {"densenet169_a": "1"}
    assert '{""densenet169_a"":""1""}' in lines[2]


def test_unknown_extension_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"\.csv, \.jsonl"):
        open_sink(tmp_path / "scores.xlsx", resume=False)
