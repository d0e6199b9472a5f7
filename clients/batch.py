"""Asynchronous batch scoring of many radiographs against the MURA ensemble on Triton.

Why not a loop over `MuraClient.score`: a batch of thousands of images needs (1) a fixed number
of requests in flight, fed from a queue, (2) one row per image written as it completes, and (3)
optional Triton system shared memory, which puts the pixels in a region the server maps instead
of the request. Sending, retrying, failing over and the run's one outage budget are the one
transport's (`clients.transport`, as for `MuraClient` and `WristClient`); this module is the
codec (`ScoreItem` -> request, response -> row) plus the queue and the shared-memory regions.
Decoding uses the one radiograph reader (`msk.imaging`) as every other client, and rows carry the
same fields as `MuraResult.to_json()` (+ path, study, error reason, attempts).

Guarantees (tested by killing the real server mid-batch, and one of three replicas behind a
balancer): every input ends up in exactly one row; a server restart costs retries, never rows; a
bad file is one error row. Several endpoints are spread over and failed over between; the run
has one outage budget (`clients.failover.CircuitBreaker`), not one per image; an overloaded
server's fast rejections (RESOURCE_EXHAUSTED, or UNAVAILABLE from a full queue) are backed off
and retried like an outage, but any success closes the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.errors import Reason, RequestFailed, shared_memory_in_use
from clients.failover import Endpoint, url_list
from clients.inputs import ScoreItem
from clients.mura import (
    EnsembleContract,
    MuraClient,
    MuraResult,
    discover_contract,
    request_parameters,
)
from clients.outputs import Sink
from clients.rows import common_fields, trust_fields
from clients.study import ScoredImage, study_call
from clients.telemetry import observe_request
from clients.tls import GrpcTls, client_kwargs
from clients.transport import Inputs, RetryPolicy, Run, Transport
from msk.constants import (
    MURA_DEFAULT_THRESHOLD,
    MURA_ENSEMBLE_MODEL,
    OOD_POLICIES,
    OOD_REFUSED_REASON,
    SCORE_SHM_PREFIX,
)
from msk.imaging import RadiographError, load_grayscale
from msk.process import SHM_ROOT, hold_region, remove_dead_owners_regions

SHM_PREFIX = SCORE_SHM_PREFIX
"""System shared-memory regions of `msk score` are /dev/shm/msk_score_<pid>_<random>_<slot>."""


def remove_dead_clients_regions() -> list[Path]:
    """Remove the regions that SIGKILLed `msk score` runs of this user left in /dev/shm.

    Every run does it first: a killed run cannot clean up after itself, and the RAM its files
    hold is never given back otherwise. The pid in the name must be dead and the file unlocked
    (`msk.process.owner_gone`): a live run's regions, even in another container, stay."""
    return remove_dead_owners_regions(SHM_PREFIX)


class SharedMemoryUnavailable(ConnectionError):
    """The server cannot use system shared memory from this client (not the same host)."""


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    scored: int = 0
    errors: int = 0
    retries: int = 0
    errors_by_reason: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    studies: int = 0
    overload_rejections: int = 0
    circuit: dict[str, Any] = field(default_factory=dict)
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        done = self.scored + self.errors
        return {
            "total": self.total, "skipped_resume": self.skipped, "scored": self.scored,
            "errors": self.errors, "errors_by_reason": dict(self.errors_by_reason),
            "retries": self.retries, "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(done / self.elapsed_s, 3) if self.elapsed_s > 0 else None,
            "studies": self.studies, "overload_rejections": self.overload_rejections,
            "circuit": self.circuit, "endpoints": self.endpoints,
        }

    def outage_note(self) -> str | None:
        """One sentence for the user when the run's outage budget was spent."""
        if not self.circuit.get("open"):
            return None
        return (f"Triton was unavailable for more than {self.circuit['budget_s']:.0f} s "
                f"(--retry-for): the run gave up; "
                f"{self.errors_by_reason.get('server_unavailable', 0)} images are "
                "`server_unavailable` rows ("
                f"{self.circuit['refused_while_open']} never sent); rerun with --resume "
                "to score them")


def result_row(item: ScoreItem, result: MuraResult, attempts: int) -> dict[str, Any]:
    """A scored image as one output row: the shared fields (`clients.rows`), then the scores
    (`MuraResult.to_json()`) and the batch's own keys (study, label, attempts)."""
    row: dict[str, Any] = {**result.to_json(), "input": item.path}
    return {**row, "study": item.study, "label": item.label, "attempts": attempts}


def error_row(item: ScoreItem, error: str, reason: str, attempts: int = 0,
              latency_s: float | None = None) -> dict[str, Any]:
    """One failed image: same keys as a result row, scores empty, `error` says what and why."""
    return {
        **common_fields(item.path, error=error, error_reason=reason, latency_s=latency_s),
        "probability": None, "abnormal": None, "threshold": None, "body_part": item.body_part,
        "members": None, "weights": None, **trust_fields(),
        "study": item.study, "label": item.label, "attempts": attempts,
    }


class _ShmSlot:
    """One system shared-memory region per in-flight request, grown when an image needs more."""

    def __init__(self, prefix: str, index: int) -> None:
        self.name = f"{prefix}_{index}"
        self.key = f"/{self.name}"
        self.size = 0
        self.handle: Any = None
        self.lock_fd: int | None = None
        """Holds `msk.process.hold_region`'s lock: says "alive" to other processes' sweeps."""
        self.registered: set[str] = set()
        """Endpoints (URLs) this region is registered with."""

    def ensure(self, nbytes: int) -> bool:
        """Make the region hold `nbytes`; True when it was (re)created and must be registered."""
        import tritonclient.utils.shared_memory as shm

        if self.handle is not None and nbytes <= self.size:
            return False
        self.destroy()
        size = 1 << max(20, (nbytes - 1).bit_length())  # next power of two, >= 1 MiB
        try:
            # create_only: never adopt a file someone else made under our name (it could be
            # theirs, world-readable); ours is created 0600 (readable by this user only).
            self.handle = shm.create_shared_memory_region(self.name, self.key, size,
                                                          create_only=True)
        except shm.SharedMemoryException as exc:
            if isinstance(exc.__cause__, FileExistsError):
                raise RequestFailed(Reason.INFERENCE_FAILED,
                                    f"shared-memory region {SHM_ROOT}{self.key} exists already "
                                    "and is not ours: not putting images in it") from exc
            raise
        os.chmod(f"{SHM_ROOT}{self.key}", 0o600)   # patient pixels: whatever the umask says
        self.lock_fd = hold_region(f"{SHM_ROOT}{self.key}")
        self.size = size
        self.registered = set()
        return True

    def write(self, image: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self.handle, [image])

    def destroy(self) -> None:
        import tritonclient.utils.shared_memory as shm

        if self.handle is not None:
            shm.destroy_shared_memory_region(self.handle)
            self.handle = None
            self.size = 0
            self.registered = set()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


class _ShmInputs(Inputs):
    """The image in a `_ShmSlot` instead of the request: registered with each endpoint it goes
    to, registered again when a (restarted) server may have forgotten it."""

    def __init__(self, name: str, array: np.ndarray, slot: _ShmSlot) -> None:
        super().__init__(name, array)
        self.slot = slot

    @property
    def sent_bytes(self) -> int:
        return 0

    async def build(self, endpoint: Endpoint) -> list[Any]:
        import tritonclient.grpc.aio as grpc_aio
        from tritonclient.utils import InferenceServerException

        slot, client, nbytes = self.slot, endpoint.client, self.array.nbytes
        if slot.ensure(nbytes) or endpoint.url not in slot.registered:
            with contextlib.suppress(InferenceServerException):
                await client.unregister_system_shared_memory(slot.name)
            await client.register_system_shared_memory(slot.name, slot.key, slot.size)
            slot.registered.add(endpoint.url)
        slot.write(self.array)
        tensor = grpc_aio.InferInput(self.name, list(self.array.shape), "UINT8")
        tensor.set_shared_memory(slot.name, nbytes)
        return [tensor]

    def lost(self, endpoint: Endpoint) -> bool:
        """A restarted server has forgotten our regions; one that restarted between two
        requests answers a request naming a region it no longer has as a bad request."""
        self.slot.registered.discard(endpoint.url)
        return True


class BatchScorer:
    """Score `ScoreItem`s with at most `concurrency` requests in flight.

    `run()` writes one row per item to `sink` (the output file) and calls `on_row` (stdout,
    progress) as each completes; it returns a `Summary`.
    """

    def __init__(self, url: str | list[str], concurrency: int = 4,
                 model: str = MURA_ENSEMBLE_MODEL, shared_memory: bool = False,
                 retry: RetryPolicy | None = None, request_timeout_s: float = 120.0,
                 tls: GrpcTls | None = None, ood_policy: str = "flag") -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if ood_policy not in OOD_POLICIES:
            raise ValueError(f"ood_policy must be one of {OOD_POLICIES}, got {ood_policy!r}")
        self.ood_policy = ood_policy
        self.urls = url_list(url)
        self.url = self.urls[0]
        """The endpoint the contract was read from (the first ready one)."""
        self.concurrency = concurrency
        self.model = model
        self.shared_memory = shared_memory
        self.retry = retry or RetryPolicy()
        self.request_timeout_s = request_timeout_s
        self._tls = client_kwargs(tls)
        self.pipeline = MuraClient.pipeline
        self._contract: EnsembleContract | None = None
        self._shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._summary = Summary()
        self.transport = Transport(self.urls, pipeline=self.pipeline, tls=tls,
                                   timeout_s=request_timeout_s, retry=self.retry)
        self.pool = self.transport.pool
        self.default_threshold: float | None = None
        """The served model's default operating point, once a response has said it."""
        self.breaker = self.transport.new_run().breaker
        """The last run's outage budget (`Summary.circuit`)."""
        self._dead_regions_removed = False

    @property
    def contract(self) -> EnsembleContract:
        if self._contract is None:
            raise RuntimeError("call wait_ready() first: the contract comes from the server")
        return self._contract

    async def _score_one(self, run: Run, item: ScoreItem,
                         slot: _ShmSlot | None) -> dict[str, Any]:
        if item.error:
            return error_row(item, item.error, "input_not_found")
        try:
            image = await asyncio.to_thread(load_grayscale, item.path)
        except RadiographError as exc:
            observe_request(self.pipeline, "invalid_input", 0.0, 0)
            return error_row(item, str(exc), exc.reason)
        contract = self.contract
        inputs = (Inputs(contract.input_name, image) if slot is None
                  else _ShmInputs(contract.input_name, image, slot))
        try:
            reply = await self.transport.infer(     # heatmaps are not batch output
                run, self.model, inputs, contract.wanted(False),
                lambda response: MuraClient.parse_result(response, item.path, item.body_part,
                                                         contract, self.ood_policy),
                request_parameters(item.body_part))
        except RequestFailed as exc:
            return error_row(item, f"{item.path}: {exc}", exc.reason, exc.attempts,
                             exc.latency_s)
        result = reply.value
        result.latency_s = reply.latency_s
        self.default_threshold = result.default_threshold
        return result_row(item, result, reply.attempts)

    def _discover(self, url: str) -> EnsembleContract:
        import tritonclient.grpc as grpcclient

        sync = grpcclient.InferenceServerClient(url, **self._tls)
        try:
            return discover_contract(sync, self.model)
        finally:
            sync.close()

    def _release(self, slots: list[_ShmSlot], in_use_wait_s: float = 15.0) -> None:
        """Unregister and remove our shared-memory regions.

        Synchronous on purpose: it runs in `run()`'s `finally` also when the run is being
        cancelled (Ctrl-C, SIGTERM), where an `await` would be cancelled in turn and leave
        regions registered on the server. Triton refuses to unregister a region that a request
        it is still executing uses ("currently in use"), so that is retried for a while.
        """
        for url in sorted({u for s in slots for u in s.registered}):
            self._unregister(url, [s for s in slots if url in s.registered], in_use_wait_s)
        for slot in slots:
            slot.destroy()

    def _unregister(self, url: str, pending: list[_ShmSlot], in_use_wait_s: float) -> None:
        """Unregister `pending` regions from the server at `url`, waiting while in use."""
        if pending:
            import tritonclient.grpc as grpcclient

            deadline = time.monotonic() + in_use_wait_s
            try:
                sync = grpcclient.InferenceServerClient(url, **self._tls)
                try:
                    while pending:
                        busy = []
                        for slot in pending:
                            try:
                                sync.unregister_system_shared_memory(slot.name, client_timeout=5)
                            except Exception as exc:  # noqa: BLE001  # why: cleanup; the server may be gone
                                if shared_memory_in_use(exc):
                                    busy.append(slot)
                        pending = busy
                        if not pending or time.monotonic() > deadline:
                            break
                        time.sleep(0.1)
                finally:
                    sync.close()
            except Exception:  # noqa: BLE001  # why: cleanup must not hide the run's outcome
                pass

    def _probe_shared_memory(self) -> None:
        """Fail fast when the server cannot map our regions (it is not on this host).

        Otherwise every image would be retried for `give_up_after_s` before failing.
        """
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        probe = _ShmSlot(f"{self._shm_prefix}_probe", 0)
        probe.ensure(1)
        sync = grpcclient.InferenceServerClient(self.url, **self._tls)
        try:
            sync.register_system_shared_memory(probe.name, probe.key, probe.size)
            sync.unregister_system_shared_memory(probe.name)
        except InferenceServerException as exc:
            raise SharedMemoryUnavailable(
                f"--shared-memory: Triton at {self.url} cannot map this host's /dev/shm "
                f"({exc.message()}); run on the server's host (in Docker: ipc: host) or drop "
                "--shared-memory") from exc
        finally:
            sync.close()
            probe.destroy()

    def _remove_dead_regions(self) -> None:
        """Once per scorer, first thing: the regions killed runs left (`remove_dead_clients_
        regions`), whether or not this run uses shared memory and whether or not the server
        answers."""
        if self._dead_regions_removed:
            return
        self._dead_regions_removed = True
        removed = remove_dead_clients_regions()
        if removed:
            print(f"msk score: removed {len(removed)} shared-memory region(s) left in "
                  f"{SHM_ROOT} by killed msk score runs", file=sys.stderr)

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until one endpoint has the model ready (the others are tried as the run goes);
        raise a clear ConnectionError naming every endpoint if none does."""
        import tritonclient.grpc.aio as grpc_aio

        self._remove_dead_regions()
        deadline = time.monotonic() + timeout_s
        last: dict[str, str] = {u: "no answer" for u in self.urls}
        clients = {u: grpc_aio.InferenceServerClient(u, **self._tls) for u in self.urls}
        try:
            while True:
                for url, client in clients.items():
                    try:
                        if (await client.is_server_live()
                                and await client.is_model_ready(self.model)):
                            self.url = url
                            self._contract = await asyncio.to_thread(self._discover, url)
                            if self.shared_memory:
                                await asyncio.to_thread(self._probe_shared_memory)
                            return
                        last[url] = f"model {self.model!r} is not ready"
                    except SharedMemoryUnavailable:
                        raise
                    except Exception as exc:  # noqa: BLE001  # why: any failure means "not yet"
                        last[url] = str(exc)
                if time.monotonic() >= deadline:
                    detail = "; ".join(f"{u}: {m}" for u, m in last.items())
                    raise ConnectionError(f"Triton at {', '.join(self.urls)} not ready after "
                                          f"{timeout_s:.0f} s: {detail}")
                await asyncio.sleep(0.25)
        finally:
            for client in clients.values():
                await client.close()

    async def run(self, items: list[ScoreItem], sink: Sink | None,
                  on_row: Callable[[dict[str, Any]], None] | None = None,
                  skipped: int = 0) -> Summary:
        self._remove_dead_regions()
        self._summary = Summary(total=len(items) + skipped, skipped=skipped)
        run = self.transport.new_run()
        self.breaker = run.breaker
        started = time.perf_counter()
        queue: asyncio.Queue[ScoreItem] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        await self.transport.connect()
        slots = ([_ShmSlot(self._shm_prefix, i) for i in range(self.concurrency)]
                 if self.shared_memory else [None] * self.concurrency)

        async def worker(slot: _ShmSlot | None) -> None:
            while True:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                row = await self._score_one(run, item, slot)
                if row["error"]:
                    self._summary.errors += 1
                    self._summary.errors_by_reason[row["error_reason"]] += 1
                else:
                    self._summary.scored += 1
                if sink is not None:
                    sink.write(row)
                if on_row is not None:
                    on_row(row)

        try:
            await asyncio.gather(*(worker(s) for s in slots))
        finally:
            self._release([s for s in slots if s is not None])
            await self.transport.aclose()
        self._summary.elapsed_s = time.perf_counter() - started
        self._summary.retries = run.retries
        self._summary.overload_rejections = run.overload_rejections
        self._summary.circuit = self.breaker.report()
        self._summary.endpoints = self.pool.report()
        return self._summary


def study_rows(rows: list[dict[str, Any]],
               default_threshold: float | None = None) -> list[dict[str, Any]]:
    """One row per study of the image rows, by the one study rule (`clients.study`).

    `default_threshold` is the model's default operating point (used for mixed body parts); when
    not given it is read from the rows themselves (each scored row carries the operating point
    the model reported), so `--merge` and a resume that scored nothing call studies the same way
    as the run that wrote the rows. Files from before that field fall back to the constant.
    """
    if default_threshold is None:
        recorded = [r["default_threshold"] for r in rows
                    if r.get("default_threshold") is not None]
        default_threshold = float(recorded[0]) if recorded else MURA_DEFAULT_THRESHOLD
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("study"):
            groups.setdefault(row["study"], []).append(row)
    studies = []
    for study, members in sorted(groups.items()):
        call = study_call(
            (ScoredImage(None if r.get("error") else r.get("probability"), r.get("body_part"),
                         r.get("threshold"), in_distribution=r.get("in_distribution"),
                         refused=r.get("error_reason") == OOD_REFUSED_REASON)
             for r in members), default_threshold)
        labels = {r.get("label") for r in members if r.get("label") is not None}
        studies.append({"study": study, "label": labels.pop() if len(labels) == 1 else None,
                        **call.to_json()})
    return studies


STUDY_COLUMNS = ["study", "body_part", "label", "images", "scored", "failed", "refused",
                 "out_of_distribution", "probability", "threshold", "abnormal",
                 "mixed_body_parts", "error"]
