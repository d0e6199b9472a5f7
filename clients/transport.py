"""The one way every client talks to Triton: send, classify, retry, back off, fail over.

Why one core: the MURA client (callbacks, one retry per endpoint), the batch scorer (asyncio, a
time-budget circuit breaker) and the wrist client (synchronous, one endpoint after another) each
had their own request loop, and each answered an outage differently. Now they are codecs
(inputs -> request, response -> typed result) over `Transport`, which alone decides:

- where a request goes: round-robin over the `--url`s (`clients.failover.EndpointPool`);
- what a failure means: `clients.errors.request_reason`, one code per failure;
- what happens next: a reason that says nothing about the input (`is_retryable`) is sent again,
  at once to another endpoint while one is healthy (a failover), otherwise after the one
  backoff (`msk.backoff`, via `RetryPolicy`) while the run's ONE outage budget lasts
  (`clients.failover.CircuitBreaker`: "no success anywhere for `give_up_after_s`"); any other
  reason, or the budget spent, ends in one `clients.errors.RequestFailed`.

The core is asynchronous (tritonclient.grpc.aio). The synchronous clients run the same
coroutines on a private event loop (`BlockingLoop`), so there is one loop of retries, not a
synchronous copy of it; Ctrl-C in the calling thread cancels the requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from clients.errors import Reason, RequestFailed, error_text, is_retryable, request_reason
from clients.failover import CircuitBreaker, Endpoint, EndpointPool, url_list
from clients.telemetry import observe_request
from clients.tls import GrpcTls, client_kwargs
from msk.backoff import backoff_delay

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter, bounded by total time rather than a count.

    A restart of a large repository takes tens of seconds: a count of retries would either give
    up too early or hammer the server; a time budget says what the user means. The budget
    (`give_up_after_s`, `msk score --retry-for`) is the whole run's, not each image's
    (`CircuitBreaker`). 0 means: each endpoint once, then give up (no waiting).
    """

    initial_s: float = 0.2
    max_s: float = 5.0
    give_up_after_s: float = 300.0

    def delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.initial_s, self.max_s, jitter=True)


NO_WAITING = RetryPolicy(give_up_after_s=0.0)
"""The interactive clients' default (`MuraClient`, `WristClient`): fail over to every endpoint
once, then report the image's error at once (a web page or the gateway's queue decides when to
try again)."""


@dataclass
class Run:
    """One outage budget and what it saw: a batch run, or one call of a synchronous client."""

    breaker: CircuitBreaker
    retries: int = 0
    overload_rejections: int = 0


@dataclass
class Reply(Generic[T]):
    """A request's answer (parsed by the codec), how many requests it took and how long."""

    value: T
    attempts: int
    latency_s: float


class Inputs:
    """A request's one input tensor, carried in the request itself.

    `clients.batch` places it in a shared-memory region instead (a subclass): `build` then
    registers the region with the endpoint, and `lost` says that a refused request may only
    mean that a restarted server forgot the region (worth one more try)."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name = name
        self.array = array

    @property
    def sent_bytes(self) -> int:
        """Bytes the request carries (telemetry)."""
        return self.array.nbytes

    async def build(self, endpoint: Endpoint) -> list[Any]:
        import tritonclient.grpc.aio as grpc_aio
        from tritonclient.utils import np_to_triton_dtype

        tensor = grpc_aio.InferInput(self.name, list(self.array.shape),
                                     np_to_triton_dtype(self.array.dtype))
        tensor.set_data_from_numpy(self.array)
        return [tensor]

    def lost(self, endpoint: Endpoint) -> bool:
        """The request failed at `endpoint`; True when state the server may have forgotten
        (a registered region) could explain a refusal, so that one more try is worth it."""
        return False


class Transport:
    """Endpoints, failover, retries and the outage budget for one client (see the module)."""

    def __init__(self, url: str | Sequence[str], *, pipeline: str, tls: GrpcTls | None = None,
                 timeout_s: float = 120.0, retry: RetryPolicy | None = None) -> None:
        self.urls = url_list(url)
        self.pool = EndpointPool(self.urls)
        self.pipeline = pipeline
        """The telemetry label of every request (`clients.telemetry`)."""
        self.tls_kwargs = client_kwargs(tls)
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._connected = False

    def new_run(self) -> Run:
        """A fresh outage budget: per batch run, per call of a synchronous client."""
        return Run(CircuitBreaker(self.retry.give_up_after_s))

    async def connect(self) -> None:
        """Open a gRPC channel to every endpoint on the running event loop (idempotent)."""
        import tritonclient.grpc.aio as grpc_aio

        if not self._connected:
            for endpoint in self.pool.endpoints:
                endpoint.client = grpc_aio.InferenceServerClient(endpoint.url, **self.tls_kwargs)
            self._connected = True

    async def aclose(self) -> None:
        if self._connected:
            self._connected = False
            for endpoint in self.pool.endpoints:
                with contextlib.suppress(Exception):    # closing must not hide the outcome
                    await endpoint.client.close()
                endpoint.client = None

    async def infer(self, run: Run, model: str, inputs: Inputs, outputs: Sequence[str],
                    parse: Callable[[Any], T],
                    parameters: Mapping[str, str] | None = None) -> Reply[T]:
        """One inference with the outputs the codec names, its response `parse`d; raises
        `RequestFailed` (a `Reason.BAD_RESPONSE` when `parse` cannot read the answer).
        `parameters` are request parameters the models read (the MURA body part, which labels
        the server's drift metrics)."""
        import tritonclient.grpc.aio as grpc_aio

        async def send(endpoint: Endpoint) -> Any:
            tensors = await inputs.build(endpoint)
            return await endpoint.client.infer(
                model, tensors, outputs=[grpc_aio.InferRequestedOutput(n) for n in outputs],
                client_timeout=self.timeout_s, parameters=dict(parameters or {}) or None)

        reply = await self.call(run, send, sent_bytes=inputs.sent_bytes, lost=inputs.lost)
        try:
            value = parse(reply.value)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
            observe_request(self.pipeline, "bad_response", reply.latency_s, inputs.sent_bytes)
            raise RequestFailed(Reason.BAD_RESPONSE, f"bad response: {exc}",
                                attempts=reply.attempts, latency_s=reply.latency_s) from exc
        observe_request(self.pipeline, "ok", reply.latency_s, inputs.sent_bytes)
        return Reply(value, reply.attempts, reply.latency_s)

    async def call(self, run: Run, send: Callable[[Endpoint], Awaitable[T]], *,
                   sent_bytes: int = 0,
                   lost: Callable[[Endpoint], bool] | None = None) -> Reply[T]:
        """`send` to one endpoint after another until one answers (the one retry loop)."""
        from tritonclient.utils import InferenceServerException

        first = time.perf_counter()
        attempts = waits = 0
        last, last_reason = "", Reason.SERVER_UNAVAILABLE
        second_chance = False
        while True:
            if run.breaker.open:
                raise self._gave_up(run, attempts, last, last_reason, first)
            attempts += 1
            endpoint = self.pool.pick()
            started = time.perf_counter()
            try:
                value = await send(endpoint)
            except (InferenceServerException, OSError) as exc:  # OSError includes TimeoutError
                elapsed = time.perf_counter() - started
                reason = request_reason(exc)
                if not is_retryable(reason):
                    if lost is not None and not second_chance and lost(endpoint):
                        second_chance = True
                        run.retries += 1
                        continue
                    observe_request(self.pipeline, "server_error", elapsed, sent_bytes)
                    raise RequestFailed(reason, error_text(exc), attempts=attempts,
                                        latency_s=time.perf_counter() - first) from exc
                if lost is not None:
                    lost(endpoint)
                overloaded = reason == Reason.SERVER_OVERLOADED
                observe_request(self.pipeline, "overloaded" if overloaded else "unavailable",
                                elapsed, sent_bytes)
                run.overload_rejections += overloaded
                self.pool.failure(endpoint)
                last, last_reason = error_text(exc), reason
                if not self.pool.any_healthy():      # nowhere to fail over to: an outage
                    if run.breaker.failure():
                        raise self._gave_up(run, attempts, last, last_reason, first) from exc
                    waits += 1
                    await asyncio.sleep(self.retry.delay(waits - 1))
                run.retries += 1
                continue
            self.pool.success(endpoint)
            run.breaker.success()
            return Reply(value, attempts, time.perf_counter() - first)

    def _gave_up(self, run: Run, attempts: int, last: str, reason: str,
                 first: float) -> RequestFailed:
        """The outage budget is spent: the last failure's reason (`server_unavailable` when
        nothing was sent), counted as refused when nothing was."""
        run.breaker.refused += attempts == 0
        return RequestFailed(
            reason, f"server unavailable for more than {run.breaker.budget_s:.0f} s, the "
            f"run's outage budget; not scored after {attempts} attempt(s)"
            f"{f' ({last})' if last else ''}",
            attempts=attempts, latency_s=time.perf_counter() - first if attempts else None)


class BlockingLoop:
    """A private event loop on a daemon thread, started on first use: the synchronous clients
    run the async core on it and block for the answer.

    Why not `asyncio.run` per call: callers (the gateway, the web app) may already be inside an
    event loop, and the gRPC channels, bound to the loop that opened them, are kept between
    calls. Why a thread: `run` may be called from any thread, several at once."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None

    @property
    def started(self) -> bool:
        return self._loop is not None

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="triton-client-loop",
                                          daemon=True)
                thread.start()
                self._loop = loop
                self._finalizer = weakref.finalize(self, _stop_loop, loop, thread)
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop and return its result. An exception in the calling
        thread (KeyboardInterrupt) cancels it there, so no request outlives the call."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._running())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    if thread is not threading.current_thread():
        thread.join(timeout=10)
    if not loop.is_running():
        loop.close()
