"""Several gateway processes sharing one queue folder: each study is scored
and delivered exactly once. First the queue's claims raced by real processes, then two real
`msk gateway --shared-queue` processes with the real tritonserver and Orthanc."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from clients.gateway.queue import QueueLockedError, StudyQueue
from tests.plugins.pacs import GATEWAY_AET, SyntheticPatient, make_study, storescu

STUDIES = 40


def _worker(root: str, log: str, barrier) -> None:
    """One process: promote, 'score' (stage results naming us) and 'deliver' (append a line)."""
    queue = StudyQueue(root, shared=True)
    barrier.wait()
    idle_rounds = 0
    while idle_rounds < 20:
        worked = False
        for key in queue.stable(0.0):
            queue.promote(key)
        for batch in queue.claimed("pending"):
            queue.stage_outbox(batch, {"sr.dcm": str(os.getpid()).encode()},
                               {"batch": batch, "scored_by": os.getpid()})
            worked = True
        for batch in queue.claimed("outbox"):
            summary = queue.summary(batch)
            with open(log, "a") as fh:
                fh.write(json.dumps({"batch": batch, "scored_by": summary["scored_by"],
                                     "delivered_by": os.getpid()}) + "\n")
            queue.done("outbox", batch)
            worked = True
        idle_rounds = 0 if worked else idle_rounds + 1
        time.sleep(0.01)
    queue.close()


def test_processes_sharing_a_queue_handle_each_study_once(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    seed = StudyQueue(root, shared=True)
    for i in range(STUDIES):
        for j in range(3):
            seed.store(f"1.2.826.0.1.{i}", f"1.2.826.0.1.{i}.{j}", b"DICM" * 8)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    log = tmp_path / "delivered.jsonl"
    workers = [ctx.Process(target=_worker, args=(str(root), str(log), barrier))
               for _ in range(3)]
    for w in workers:
        w.start()
    seed.close()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    delivered = [json.loads(line) for line in log.read_text().splitlines()]
    batches = [d["batch"] for d in delivered]
    assert len(batches) == len(set(batches)) == STUDIES
    assert len({b.split("-")[0] for b in batches}) == STUDIES   # every study, once
    assert len({d["delivered_by"] for d in delivered}) > 1       # the work was shared
    check = StudyQueue(root, shared=True)
    assert check.depth() == {"incoming": 0, "pending": 0, "outbox": 0, "dead": 0}
    assert not [p for p in (root / "tmp").iterdir() if p != check.tmp]
    check.close()


def test_exclusive_and_shared_owners_exclude_each_other(tmp_path: Path) -> None:
    shared = StudyQueue(tmp_path, shared=True)
    with pytest.raises(QueueLockedError, match="--shared-queue"):
        StudyQueue(tmp_path)
    also = StudyQueue(tmp_path, shared=True)   # a second shared owner is welcome
    shared.close()
    also.close()
    only = StudyQueue(tmp_path)
    with pytest.raises(QueueLockedError):
        StudyQueue(tmp_path, shared=True)
    only.close()


def test_a_killed_sharer_leaves_its_claim_and_scratch_to_the_others(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    ctx = multiprocessing.get_context("spawn")
    holder = ctx.Process(target=_hold_claim_then_die, args=(str(root),))
    holder.start()
    holder.join(60)
    assert holder.exitcode == -9
    queue = StudyQueue(root, shared=True)           # recovery removed the dead one's scratch
    assert [p for p in (root / "tmp").iterdir()] == [queue.tmp]
    assert list(queue.claimed("pending")) == queue.batches("pending") != []
    queue.close()


def _hold_claim_then_die(root: str) -> None:
    import signal

    queue = StudyQueue(root, shared=True)
    queue.store("1.2.3", "1.2.3.4", b"DICM")
    batch = queue.promote(queue.stable(0.0)[0])
    (queue.tmp / ".in-half-written").write_bytes(b"x")
    with queue.claim("pending", batch) as mine:
        assert mine
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(600)
def test_two_gateways_sharing_one_queue_deliver_each_study_once(tiny_triton, orthanc,
                                                                start_gateway, tmp_path):
    shared = tmp_path / "shared-queue"
    gateways = [start_gateway(tiny_triton.grpc_url, orthanc.destination, "--data-dir",
                              str(shared), "--shared-queue", "--audit-log",
                              str(tmp_path / f"audit-{i}.jsonl")) for i in range(2)]
    studies = []
    for i in range(4):
        patient = SyntheticPatient(f"Share^Test{i}", f"SHQ-{i:04d}", "19700101")
        files = make_study(tmp_path / f"study{i}", patient, ["WRIST", "WRIST", "HAND"])
        studies.append(dcmread(files[0]).StudyInstanceUID)
        # One study's instances arrive at both gateways: the shared queue makes it one batch.
        storescu(files[:1], gateways[0].port, GATEWAY_AET)
        storescu(files[1:], gateways[1].port, GATEWAY_AET)
    for uid in studies:
        orthanc.wait_for_sr(uid, diagnostics=lambda: gateways[0].logs() + gateways[1].logs())

    def delivered() -> list[dict]:
        entries = []
        for i in range(2):
            path = tmp_path / f"audit-{i}.jsonl"
            if path.exists():
                entries += [json.loads(line) for line in path.read_text().splitlines()
                            if line and json.loads(line)["event"] == "delivered"]
        return entries

    deadline = time.monotonic() + 60
    while len(delivered()) < len(studies) and time.monotonic() < deadline:
        time.sleep(0.3)
    for gw in gateways:
        gw.stop()                                   # nothing more can be sent after this
    entries = delivered()
    assert len(entries) == len(studies), entries
    assert len({e["batch"] for e in entries}) == len(studies)
    for uid in studies:
        assert len(orthanc.instances(uid, modality="SR")) == 1
