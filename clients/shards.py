"""Split a batch into shards for parallel workers, and merge their outputs back into one.

Why a hash of the path and not the position in the list: every worker expands the same manifest
itself, and a stable hash puts each image in exactly one shard even if two workers list a folder
in a different order. Each shard writes its own resumable output (`msk score --shard i/n --out
shard-i.csv --resume`), so a retried worker continues where the killed one stopped; the merge
keeps each image once (a final row wins over a `server_unavailable` one) and refuses to run when
a shard's output is missing, naming it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.inputs import ScoreItem
from clients.outputs import is_final, open_sink, output_format, read_rows, row_key

INDEX_PLACEHOLDER = "{index}"
"""In a merge input, replaced by each shard index 0..n-1 (`shard-{index}.csv`)."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`i/n` with 0 <= i < n, e.g. Kubernetes' `$JOB_COMPLETION_INDEX/8`."""
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/4") from None
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--shard {text!r}: need 0 <= INDEX < COUNT")
        return cls(index, count)

    def holds(self, path: str) -> bool:
        digest = hashlib.sha256(path.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def select(self, items: list[ScoreItem]) -> list[ScoreItem]:
        return [item for item in items if self.holds(item.path)]


def shard_files(specs: list[str], count: int | None) -> list[Path]:
    """Expand `{index}` in each spec for 0..count-1; refuse missing files, naming them."""
    files: list[Path] = []
    for spec in specs:
        if INDEX_PLACEHOLDER in spec:
            if count is None:
                raise ValueError(f"{spec}: {INDEX_PLACEHOLDER} needs --shards N")
            files += [Path(spec.replace(INDEX_PLACEHOLDER, str(i))) for i in range(count)]
        else:
            files.append(Path(spec))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"shard output missing: {', '.join(missing)} (has every shard "
                                "finished?)")
    for f in files:
        output_format(f)
    return files


def merge_shards(files: list[Path], out: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Write every image of `files` once into `out` (atomically); return rows and counts."""
    merged: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for path in files:
        for row in read_rows(path):
            key = row_key(row)
            if key in merged:
                duplicates += 1
                if is_final(merged[key]) or not is_final(row):
                    continue
            merged[key] = row
    tmp = out.with_name(f".{out.name}.merge-{os.getpid()}{out.suffix}")
    sink, _ = open_sink(tmp, resume=False)
    assert sink is not None
    try:
        try:
            for row in merged.values():
                sink.write(row)
        finally:
            sink.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)          # a failed merge leaves no half-written file
        raise
    rows = list(merged.values())
    counts = {"shards": len(files), "images": len(rows), "duplicates_dropped": duplicates,
              "errors": sum(bool(r.get("error")) for r in rows)}
    return rows, counts
