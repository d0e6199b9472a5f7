"""`clients.outputs`: result files survive a kill and `--resume` keeps each image exactly once."""

from __future__ import annotations

import pytest

from clients.outputs import csv_columns, open_sink, read_rows


def _row(path: str, error: str | None = None, reason: str | None = None) -> dict:
    return {"path": path, "study": None, "label": None, "probability": None if error else 0.25,
            "threshold": None if error else 0.5, "abnormal": None if error else False,
            "body_part": None, "members": None if error else {"densenet169_a": 0.2},
            "versions": None if error else {"densenet169_a": "1"}, "weights": None,
            "latency_ms": 3.5, "attempts": 1, "error": error, "error_reason": reason}


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
        handle.write('{"path": "d.png", "probab' if suffix == ".jsonl" else "d.png,,,0.")

    sink, kept = open_sink(out, resume=True)
    assert sorted(kept) == ["a.png", "c.png"]          # b is scored again, d was never complete
    sink.write(_row("b.png"))
    sink.write(_row("d.png"))
    sink.close()
    rows = read_rows(out)
    assert sorted(r["path"] for r in rows) == ["a.png", "b.png", "c.png", "d.png"]
    assert next(r for r in rows if r["path"] == "a.png")["members"]["densenet169_a"] == 0.2
    assert next(r for r in rows if r["path"] == "c.png")["error_reason"] == "unreadable_image"


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
