"""Scale-out, for real on one machine: three tritonserver
replicas behind a real HAProxy with one SIGKILLed mid-run; several `--url`s without a balancer;
one outage budget per run; shards merged into one file; client metrics pushed to a real
Pushgateway. Replicas serve the tiny stand-in repository so three fit in two cores."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from clients.outputs import read_rows
from clients.shards import Shard
from server.launcher import TritonServer
from tests.test_batch_score import ROOT, _msk, _summary, _wait_rows


def _images(root: Path, count: int, size: tuple[int, int] = (700, 900), seed: int = 0
            ) -> list[str]:
    """`count` PNG paths (smooth radiograph-sized images; a few distinct ones, copied)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    sources = []
    for i in range(6):
        small = Image.fromarray(rng.integers(0, 255, (12, 12), np.uint8))
        path = root / f"source{i}.png"
        small.resize((size[0] + 17 * i, size[1] - 13 * i), Image.BILINEAR).save(path)
        sources.append(path)
    paths = []
    for i in range(count):
        target = root / "images" / f"img{i:04d}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(sources[i % len(sources)], target)
        paths.append(str(target))
    return paths


def _score(*args: str) -> subprocess.Popen:
    return subprocess.Popen(_msk("score", *args, "--no-stdout", "--no-progress"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _ensemble_successes(server: TritonServer) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text)
               if f.name == "nv_inference_request_success"
               for s in f.samples if s.labels.get("model") == "mura_ensemble")


def _assert_each_image_once(out: Path, images: list[str]) -> list[dict]:
    rows = read_rows(out)
    paths = [r["input"] for r in rows]
    assert len(paths) == len(set(paths)), "an image is in the output twice"
    assert sorted(paths) == sorted(images)
    return rows


def test_replica_killed_behind_haproxy_every_image_exactly_once(tiny_repository, start_haproxy,
                                                                 tmp_path):
    images = _images(tmp_path / "in", 800)
    out = tmp_path / "scores.csv"
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(TritonServer(tiny_repository)) for _ in range(3)]
        balancer = start_haproxy(replicas)
        proc = _score(str(tmp_path / "in" / "images"), "--url", balancer.url,
                      "--concurrency", "8", "--out", str(out), "--resume")
        _wait_rows(out, 10, proc)
        replicas[1].kill()                                    # SIGKILL: a crash
        balancer.wait_status("r1", "DOWN")                    # its health check took it out
        replicas[1].start()                                   # same ports, fresh process
        assert proc.poll() is None, "the run ended before the replica came back: use more images"
        balancer.wait_status("r1", "UP")
        _, stderr = proc.communicate(timeout=600)
        rejoined = _ensemble_successes(replicas[1])
        served = [_ensemble_successes(r) for r in (replicas[0], replicas[2])]
    assert proc.returncode == 0, stderr
    rows = _assert_each_image_once(out, images)
    assert not [r for r in rows if r["error"]]
    summary = _summary(stderr)
    assert summary["scored"] == len(images) and summary["circuit"]["open"] is False
    assert all(n > 0 for n in served), (served, rejoined, stderr[-1500:])
    assert rejoined > 0, "the restarted replica got no traffic back from the balancer"


def test_several_urls_spread_and_fail_over_without_a_balancer(tiny_repository, tmp_path):
    images = _images(tmp_path / "in", 240)
    out = tmp_path / "scores.jsonl"
    with TritonServer(tiny_repository) as first, TritonServer(tiny_repository) as second:
        proc = _score(str(tmp_path / "in" / "images"), "--url", first.grpc_url,
                      "--url", second.grpc_url, "--concurrency", "8", "--out", str(out))
        _wait_rows(out, 40, proc)
        first.kill()
        _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    rows = _assert_each_image_once(out, images)
    assert not [r for r in rows if r["error"]]
    endpoints = _summary(stderr)["endpoints"]
    assert endpoints[first.grpc_url]["ok"] > 0 and endpoints[second.grpc_url]["ok"] > 0
    assert endpoints[first.grpc_url]["failed_attempts"] > 0
    assert endpoints[second.grpc_url]["ok"] > endpoints[first.grpc_url]["ok"]
    assert "endpoints:" in stderr


def test_dead_server_spends_one_outage_budget_per_run_then_resume(tiny_repository, tmp_path):
    """With Triton gone, the run stops trying after ONE --retry-for, marks the
    rest server_unavailable without sending them, says so; --resume later scores them once."""
    images = _images(tmp_path / "in", 200, size=(300, 400))
    out = tmp_path / "scores.csv"
    server = TritonServer(tiny_repository).start()
    try:
        proc = _score(str(tmp_path / "in" / "images"), "--url", server.grpc_url,
                      "--concurrency", "4", "--out", str(out), "--retry-for", "3")
        _wait_rows(out, 20, proc)
        server.kill()
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 1, stderr
        rows = _assert_each_image_once(out, images)
        failed = [r for r in rows if r["error"]]
        assert failed and {r["error_reason"] for r in failed} == {"server_unavailable"}
        summary = _summary(stderr)
        circuit = summary["circuit"]
        assert circuit["open"] is True and circuit["outages"] == 1
        # Most images were never sent: the budget was the run's, not each image's.
        assert circuit["refused_while_open"] > 0
        assert circuit["refused_while_open"] + summary["scored"] + 4 >= len(images)
        assert "outage budget" in failed[0]["error"]
        assert "rerun with --resume" in stderr

        server.start()
        proc = _score(str(tmp_path / "in" / "images"), "--url", server.grpc_url,
                      "--out", str(out), "--resume")
        _, stderr = proc.communicate(timeout=600)
    finally:
        server.stop()
    assert proc.returncode == 0, stderr
    rows = _assert_each_image_once(out, images)
    assert not [r for r in rows if r["error"]]
    assert _summary(stderr)["skipped_resume"] == len(images) - len(failed)


def _pushed(url: str, job: str = "msk_score") -> dict[str, float]:
    """instance -> sum of msk_client_requests_total{outcome="ok"} the Pushgateway holds."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (family.name == "msk_client_requests" and s.name.endswith("_total")
                    and s.labels.get("job") == job
                    and s.labels.get("outcome") == "ok"):
                found[s.labels["instance"]] = found.get(s.labels["instance"], 0) + s.value
    return found


def test_shards_cover_every_image_once_merge_and_push_metrics(tiny_triton, pushgateway, tmp_path):
    images = _images(tmp_path / "in", 60, size=(96, 160))
    folder = str(tmp_path / "in" / "images")
    shards = 3
    pids = []
    for index in range(shards):
        proc = _score(folder, "--url", tiny_triton.grpc_url, "--shard", f"{index}/{shards}",
                      "--out", str(tmp_path / f"shard-{index}.csv"), "--resume",
                      "--metrics-push", pushgateway)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        pids.append(proc.pid)
    per_shard = [{r["input"] for r in read_rows(tmp_path / f"shard-{i}.csv")}
                 for i in range(shards)]
    assert all(per_shard) and sum(map(len, per_shard)) == len(images)
    assert set.union(*per_shard) == set(images)
    assert per_shard[1] == {p for p in images if Shard(1, shards).holds(p)}

    # Each run pushed its own group (instance <host>:<pid>); together they counted every image.
    pushed = {instance: n for instance, n in _pushed(pushgateway).items()
              if int(instance.rsplit(":", 1)[1]) in pids}
    assert len(pushed) == shards and sum(pushed.values()) == len(images)

    merged = tmp_path / "scores.csv"
    result = subprocess.run(_msk("score", "--merge", "--shards", str(shards), "--out",
                                 str(merged), str(tmp_path / "shard-{index}.csv")),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = _assert_each_image_once(merged, images)
    assert not [r for r in rows if r["error"]]
    assert _summary(result.stderr)["images"] == len(images)

    # A missing shard is refused, named, and the merged file is left as it was.
    before = merged.read_bytes()
    (tmp_path / "shard-2.csv").unlink()
    result = subprocess.run(_msk("score", "--merge", "--shards", str(shards), "--out",
                                 str(merged), str(tmp_path / "shard-{index}.csv")),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "shard-2.csv" in result.stderr
    assert merged.read_bytes() == before


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "a/b", "1", "0/0"])
def test_bad_shard_spec_is_refused_with_reason(spec):
    result = subprocess.run(_msk("score", "x.png", f"--shard={spec}"), capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and f"--shard {spec!r}" in result.stderr


def _bounded_queue_repository(source: Path, target: Path) -> Path:
    """A copy of the tiny repository whose first ensemble step keeps at most one request
    waiting and rejects the rest at once (Triton's `default_queue_policy`), as an overloaded
    server does. (A bound on the backbones instead, behind the ensemble's first step, made
    tritonserver 2.51 segfault in TRITONBACKEND_ResponseSend on the first burst here.)"""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".complete"))
    config = target / "mura_preprocess" / "config.pbtxt"
    text = config.read_text()
    bounded = re.sub(r"max_queue_size: \d+", "max_queue_size: 1", text)
    assert bounded != text, "the generated config has no bounded queue policy to tighten"
    config.write_text(bounded)
    return target


def test_overload_rejections_are_backed_off_and_retried(tiny_repository, tmp_path):
    """Client side: a server rejecting from its bounded queue is answered with
    backoff and retries; every image is still scored once and the summary counts rejections."""
    images = _images(tmp_path / "in", 200, size=(300, 400))
    out = tmp_path / "scores.csv"
    repository = _bounded_queue_repository(tiny_repository, tmp_path / "repository")
    with TritonServer(repository) as server:
        proc = _score(str(tmp_path / "in" / "images"), "--url", server.grpc_url,
                      "--concurrency", "32", "--out", str(out))
        _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    rows = _assert_each_image_once(out, images)
    assert not [r for r in rows if r["error"]]
    summary = _summary(stderr)
    assert summary["overload_rejections"] > 0, "the bounded queue never rejected: no overload"
    assert summary["retries"] >= summary["overload_rejections"]
    assert summary["circuit"]["open"] is False
    assert "rejected" in stderr and "as overloaded" in stderr


def test_circuit_counts_one_budget_and_any_success_closes_an_outage():
    from clients.failover import CircuitBreaker

    breaker = CircuitBreaker(budget_s=10.0)
    assert not breaker.failure(now=100.0) and not breaker.failure(now=109.0)
    breaker.success(now=109.5)                       # a 9.5 s outage ends: the budget is whole
    assert not breaker.failure(now=200.0) and not breaker.failure(now=209.0)
    assert breaker.failure(now=210.5) and breaker.open
    breaker.success(now=211.0)                       # once spent, the run's budget stays spent
    assert breaker.open
    report = breaker.report()
    assert report["outages"] == 2 and report["longest_outage_s"] == 10.5


def test_endpoint_pool_skips_a_failed_endpoint_until_its_cooldown_ends():
    from clients.failover import EndpointPool

    pool = EndpointPool(["a:1", "b:2", "a:1"], cooldown_s=1.0)
    assert [e.url for e in pool.endpoints] == ["a:1", "b:2"]
    a, b = pool.endpoints
    assert [pool.pick(now=0.0).url for _ in range(4)] == ["a:1", "b:2", "a:1", "b:2"]
    pool.failure(a, now=10.0)
    assert {pool.pick(now=10.1).url for _ in range(3)} == {"b:2"}
    assert pool.pick(now=11.1).url == "a:1"          # cooled down: tried again
    pool.failure(a, now=11.1)                          # fails again: a longer cooldown
    pool.failure(b, now=11.1)
    assert pool.pick(now=11.2) is b and not pool.any_healthy(now=11.2)
    pool.success(a)
    assert pool.any_healthy(now=11.2)


def test_the_balancer_never_shares_its_grpc_port_with_its_stats_page() -> None:
    """Both frontends on one port (ports picked one after another can repeat) sent some gRPC
    clients to the stats page: the config refuses it, and the balancer picks both in one call."""
    from server.haproxy import config_text

    with pytest.raises(ValueError, match="two ports"):
        config_text([], 40000, 40000)
