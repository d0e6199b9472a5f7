"""The durable queue: stability, batches, retries with backoff, dead letters, crash recovery.

Times are passed explicitly (`now=`), so nothing here waits or asserts on wall-clock time.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from clients.gateway.config import Destination, GatewayConfig, build_config, load_file
from clients.gateway.queue import QueueLockedError, StudyQueue, study_key


@pytest.fixture()
def queue(tmp_path: Path):
    q = StudyQueue(tmp_path / "q")
    yield q
    q.close()


def _age(q: StudyQueue, key: str, mtime: float) -> None:
    os.utime(q.dir("incoming") / key, (mtime, mtime))


def test_store_is_durable_and_keyed_without_uids(queue: StudyQueue) -> None:
    path = queue.store("1.2.3.4", "1.2.3.4.5", b"DICM-bytes")
    assert path.read_bytes() == b"DICM-bytes"
    assert "1.2.3" not in str(path.relative_to(queue.root))
    assert path.parent.name == study_key("1.2.3.4")
    queue.store("1.2.3.4", "1.2.3.4.5", b"again")        # a resend replaces, not duplicates
    assert len(list(path.parent.glob("*.dcm"))) == 1
    assert queue.depth() == {"incoming": 1, "pending": 0, "outbox": 0, "dead": 0}


def test_study_becomes_stable_only_after_quiet_period(queue: StudyQueue) -> None:
    queue.store("1.2.3.4", "1.2.3.4.5", b"a")
    key = study_key("1.2.3.4")
    _age(queue, key, 1000.0)
    assert queue.stable(30, now=1010.0) == []
    assert queue.stable(30, now=1030.0) == [key]
    batch = queue.promote(key, now=1030.0)
    assert batch and batch.startswith(key)
    assert queue.files("pending", batch)[0].read_bytes() == b"a"
    assert queue.depth()["incoming"] == 0
    # a late instance starts a new incoming study instead of racing with scoring
    queue.store("1.2.3.4", "1.2.3.4.6", b"b")
    assert queue.depth() == {"incoming": 1, "pending": 1, "outbox": 0, "dead": 0}


def test_retries_back_off_then_dead_letter(queue: StudyQueue) -> None:
    config = GatewayConfig("127.0.0.1:1", Destination.parse("PACS@127.0.0.1:104"),
                           backoff_base_s=2, backoff_max_s=5, max_attempts=3)
    assert [config.backoff(n) for n in (1, 2, 3, 4)] == [2, 4, 5, 5]
    queue.store("1.2.3.4", "1.2.3.4.5", b"a")
    batch = queue.promote(study_key("1.2.3.4"), now=0.0)
    assert queue.due("pending", now=0.0) == [batch]
    assert queue.failed("pending", batch, "Triton down", 3, config.backoff(1), now=100.0) is False
    assert queue.due("pending", now=101.0) == []            # backing off
    assert queue.due("pending", now=102.0) == [batch]
    state = queue.state("pending", batch)
    assert state.attempts == 1 and state.last_error == "Triton down"
    queue.failed("pending", batch, "Triton down", 3, config.backoff(2), now=102.0)
    assert queue.failed("pending", batch, "still down", 3, config.backoff(3), now=110.0) is True
    reason = json.loads((queue.dir("dead") / batch / "reason.json").read_text())
    assert "gave up after 3 failed attempts: still down" in reason["reason"]
    assert reason["stage"] == "pending" and reason["attempts"] == 3
    assert "still down" in reason["reason"]
    assert list((queue.dir("dead") / batch).glob("*.dcm"))
    assert queue.depth() == {"incoming": 0, "pending": 0, "outbox": 0, "dead": 1}


def test_staging_results_is_atomic_and_recovered(tmp_path: Path) -> None:
    q = StudyQueue(tmp_path / "q")
    q.store("1.2.3.4", "1.2.3.4.5", b"a")
    batch = q.promote(study_key("1.2.3.4"), now=0.0)
    q.stage_outbox(batch, {"sr.dcm": b"SR"}, {"batch": batch})
    assert q.batches("pending") == [] and q.batches("outbox") == [batch]
    assert q.summary(batch) == {"batch": batch}
    # simulate a crash between the outbox rename and the pending removal, plus a torn temp file
    (q.dir("pending") / batch).mkdir()
    (q.dir("pending") / batch / "x.dcm").write_bytes(b"a")
    (q.tmp / ".in-torn").write_bytes(b"half")
    q.close()
    q2 = StudyQueue(tmp_path / "q")
    assert q2.batches("pending") == [] and q2.batches("outbox") == [batch]
    assert list(q2.tmp.iterdir()) == []
    q2.close()


def _try_lock(root: str, result) -> None:
    try:
        StudyQueue(root)
        result.put("locked-ok")
    except QueueLockedError as exc:
        result.put(str(exc))


def test_one_gateway_per_data_dir(queue: StudyQueue) -> None:
    result: multiprocessing.Queue = multiprocessing.Queue()
    proc = multiprocessing.get_context("fork").Process(target=_try_lock,
                                                         args=(str(queue.root), result))
    proc.start()
    proc.join(30)
    assert "in use by another gateway" in result.get(timeout=5)


def test_config_file_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("ae-title: HOSPAI\nport: 11113\ntriton_url: 10.0.0.5:8001\n"
                    "destination: PACS@pacs.local:104\nstable_seconds: 45\n"
                    "allowed_calling_aes: [PACS, CR01]\n")
    config = build_config(load_file(path), {"port": 4242, "ae_title": None})
    assert (config.ae_title, config.port, config.stable_seconds) == ("HOSPAI", 4242, 45)
    assert config.destination == Destination("PACS", "pacs.local", 104)
    assert config.allowed_calling_aes == ["PACS", "CR01"]
    assert config.audit_log == config.data_dir / "audit.jsonl"


@pytest.mark.parametrize("settings,message", [
    ({"triton_url": "x:1", "destination": "PACS@host"}, "AET@HOST:PORT"),
    ({"triton_url": "x:1", "destination": "A" * 17 + "@h:1"}, "AE title"),
    ({"triton_url": "x:1", "destination": "P@h:1", "port": 70000}, "out of range"),
    ({"destination": "P@h:1"}, "triton_url"),
])
def test_bad_settings_are_refused_with_reason(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config({}, settings)


def test_unknown_config_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.json"
    path.write_text(json.dumps({"ae_titel": "X"}))
    with pytest.raises(ValueError, match="unknown settings.*ae_titel"):
        load_file(path)


def test_outages_back_off_but_never_dead_letter(queue: StudyQueue) -> None:
    queue.store("1.2.3.4", "1.2.3.4.5", b"a")
    batch = queue.promote(study_key("1.2.3.4"), now=0.0)
    for n in range(10):                                  # far more than max_attempts=3
        dead = queue.failed("pending", batch, "Triton unreachable", 3, 1.0, now=float(n),
                            outage=True)
        assert dead is False
    state = queue.state("pending", batch)
    assert (state.attempts, state.failures) == (10, 0)
    assert queue.due("pending", now=9.5) == [] and queue.due("pending", now=10.0) == [batch]
    # once the server answers but fails the request, those failures count
    queue.failed("pending", batch, "inference failed", 3, 1.0, now=11.0)
    queue.failed("pending", batch, "inference failed", 3, 1.0, now=12.0)
    assert queue.failed("pending", batch, "inference failed", 3, 1.0, now=13.0) is True
    assert queue.batches("dead") == [batch]
