"""`clients.outputs`: result files survive a kill and `--resume` keeps each image exactly once."""

from __future__ import annotations

import csv

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


def test_resume_rewrites_a_csv_with_other_columns_under_todays_header(tmp_path):
    """A CSV from a version with fewer columns (here: before the OOD fields) resumes: its kept
    rows are rewritten under today's header before new rows are appended."""
    out = tmp_path / "older.csv"
    columns = [c for c in csv_columns() if c not in ("ood_score", "in_distribution",
                                                     "ood_threshold", "member_spread")]
    assert len(columns) < len(csv_columns())
    sink, _ = open_sink(out, resume=False)
    sink.write(_row("a.png"))
    sink.write(_row("b.png", "b.png: server unavailable", "server_unavailable"))
    sink.close()
    with out.open(newline="") as handle:
        old = list(csv.DictReader(handle))
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(old)
    sink, kept = open_sink(out, resume=True)
    assert sorted(kept) == ["a.png"]
    sink.write(_row("b.png"))
    sink.close()
    assert out.read_text().splitlines()[0].split(",") == csv_columns()
    rows = read_rows(out)
    assert sorted(r["input"] for r in rows) == ["a.png", "b.png"]
    assert all(r["latency_s"] == 0.0035 and r["notice"] == RESEARCH_USE_NOTICE for r in rows)


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
