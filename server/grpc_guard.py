"""A gRPC guard in front of tritonserver: what `msk serve` exposes on its gRPC port.

Why it exists - three faults of tritonserver 2.51 that no flag of it avoids:
  * shape overflow: a request for `mura_ensemble` with 16 bytes of data and the shape
    [2**62+4, 4] passes Triton's byte-size check (the element count wraps around int64 to 4, so
    4 x 4 bytes "match"); the python-backend stub then builds a numpy array of that shape,
    fails ("array is too big") and dies, and every later request gets "Stub process ... is not
    healthy". Fixed upstream by checked element counts (triton-inference-server/core#434,
    server#8182, backend#112, April-May 2025; common#150, 2026), i.e. not before release 25.05.
  * declared size: the shape a request declares is trusted for allocation; here every input
    whose element count exceeds `MAX_IMAGE_PIXELS` is refused (INVALID_ARGUMENT) before the
    request reaches Triton, and messages longer than the largest legal request are refused by
    gRPC from their length prefix, before they are read.
  * cancellation crash: a client that disconnects or hits its deadline mid-request makes 2.51's
    gRPC frontend segfault (server#7368/#7877/#8034; the `grpc-no-cancel` row of
    server/workarounds.py says which releases still need this). There the
    guard never cancels an upstream call: when its client goes away the call runs to its end
    and the answer is dropped. Nor does it hand Triton a per-request `timeout`: a client's
    deadline, and a `timeout` parameter it sent, are enforced here - past them the guard
    answers DEADLINE_EXCEEDED (UNAVAILABLE "Request timeout expired" for the parameter, as
    Triton would) and the upstream call finishes unseen, like a dead client's. Why: when this
    guard still turned deadlines into Triton's queue `timeout`, tests/test_deadline_stress.py
    broke 2.51 (no segfault seen, but): Triton's connection torn down mid-run; `densenet169_a`
    stuck for good with 63 requests in flight while readiness stayed true; a fresh request
    with a 120 s timeout refused "Request timeout expired"; and in 10 of the 11 runs whose log
    was kept, ensemble requests still in flight when Triton exited, its shutdown giving up on
    them. With the deadlines kept here: 0 of 19 runs (alone, beside two busy loops, two copies
    at once). The bounded queues (export/configs.py `queue_policy`) bound the dead work a crowd
    of killed or impatient clients can leave behind.

Everything else our clients use passes through byte for byte (metadata, config, statistics,
shared memory, the repository index). Triton's gRPC answers only the front door: the guard's
upstream channel presents the client certificate of the internal mutual TLS
(server/internal_tls.py), which nobody else holds. Model loading, tracing and log settings are
refused here for everyone (`CLOSED_METHODS`). TLS for clients terminates here when `msk serve` is
given certificates. The HTTP guard sends its requests through `GrpcGuard.call`, so HTTP gets the
same checks, the same drain and the same upstream channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from msk.constants import MAX_IMAGE_PIXELS, WARMUP_PARAMETER
from server.exposure import ServerTls
from server.peer_identity import identify
from server.shm_policy import SHM_METHODS, ShmPolicy, ShmRefused

SERVICE = "inference.GRPCInferenceService"
STREAM_METHODS = frozenset({"ModelStreamInfer"})
INFER_METHODS = frozenset({"ModelInfer", "ModelStreamInfer"})
MAX_MESSAGE_BYTES = MAX_IMAGE_PIXELS + 1024 * 1024
"""Largest request accepted at all: the largest legal request is one 8-bit image of
MAX_IMAGE_PIXELS (every variable-size input of the pipelines is a UINT8 image), plus 1 MiB for
the request's names, shapes and parameters. gRPC refuses a longer message from its length
prefix; measured: a refused 128 MiB request left `msk serve` 450 MB larger when the limit was
8 bytes per pixel. A direct request to a member model with a larger batch must be split."""
ELEMENT_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2,
                 "BF16": 2, "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8,
                 "FP64": 8}
"""Bytes per element of Triton's fixed-size datatypes (BYTES is variable: length-prefixed)."""
_HOP_HEADERS = ("grpc-", ":", "user-agent", "te", "content-type", "triton-grpc-protocol-")
"""Not forwarded: transport headers, and Triton's restricted-API header prefix (no client gets
to present one)."""
CLOSED_METHODS = frozenset({"RepositoryModelLoad", "RepositoryModelUnload", "TraceSetting",
                            "LogSettings"})
"""Refused at the front door: the model set is fixed at start (--model-control-mode=none), and
tracing and logging are the operator's, not a client's."""


class RequestRefused(ValueError):
    """The request declares a tensor the service never accepts."""


def check_shape(model: str, name: str, shape: list[int]) -> None:
    """Refuse negative dimensions and tensors with more than MAX_IMAGE_PIXELS elements.

    Python integers do not overflow, so [2**62+4, 4] is seen for what it is. Shared by the gRPC
    guard and the HTTP guard (server/http_guard.py)."""
    if any(d < 0 for d in shape):
        raise RequestRefused(f"input {name!r} of model {model!r} declares a negative dimension "
                             f"in shape {shape}")
    elements = math.prod(shape)
    if elements > MAX_IMAGE_PIXELS:
        raise RequestRefused(
            f"input {name!r} of model {model!r} declares shape {shape} = {elements} elements; "
            f"the most accepted is {MAX_IMAGE_PIXELS} (msk.constants.MAX_IMAGE_PIXELS)")


REFUSED_PARAMETERS = ("priority", "sequence_id", "sequence_start", "sequence_end")
"""Request parameters that mean nothing for this service's models (no priority levels, no
sequence models): refused rather than silently ignored."""


def check_infer_request(request) -> None:
    """`check_shape` for every input of a gRPC ModelInferRequest, plus what Triton 2.51 answers
    vaguely or ignores: an empty dimension, one input given twice or more raw contents than
    inputs (Triton silently used the first), and parameters no model here understands."""
    model = request.model_name
    names = [tensor.name for tensor in request.inputs]
    if len(set(names)) != len(names):
        raise RequestRefused(f"request for model {model!r} names an input twice: {names}")
    if request.raw_input_contents and len(request.raw_input_contents) != len(names):
        raise RequestRefused(f"request for model {model!r} carries "
                             f"{len(request.raw_input_contents)} raw contents for "
                             f"{len(names)} inputs")
    for key in REFUSED_PARAMETERS:
        if key in request.parameters:
            raise RequestRefused(f"parameter {key!r} is not used by model {model!r} (no "
                                 "priority levels or sequences here); send the request without "
                                 "it")
    if WARMUP_PARAMETER in request.parameters:
        raise RequestRefused(f"parameter {WARMUP_PARAMETER!r} is reserved for the server's own "
                             "warm-up; send the request without it")
    for index, tensor in enumerate(request.inputs):
        shape = [int(d) for d in tensor.shape]
        if 0 in shape:
            raise RequestRefused(f"input {tensor.name!r} of model {model!r} declares an empty "
                                 f"shape {shape}")
        check_shape(model, tensor.name, shape)
        if request.raw_input_contents and tensor.datatype != "BYTES":
            check_byte_size(model, tensor.name, tensor.datatype, shape,
                            len(request.raw_input_contents[index]))


def check_byte_size(model: str, name: str, datatype: str, shape: list[int], size: int) -> None:
    """The data must be exactly what the shape and datatype declare. Why here: tritonserver 2.51
    refuses a mismatch too, but only after copying the request in (a refused 128 MiB request
    left it 200 MB larger)."""
    if datatype not in ELEMENT_BYTES:
        raise RequestRefused(f"input {name!r} of model {model!r} has an unknown datatype "
                             f"{datatype!r}")
    expected = math.prod(shape) * ELEMENT_BYTES[datatype]
    if size != expected:
        raise RequestRefused(f"input {name!r} of model {model!r}: shape {shape} of {datatype} "
                             f"is {expected} bytes; the request carries {size}")


RELEASE_AFTER_BYTES = 4 * 1024 * 1024


def release_refused_memory() -> None:
    """Free a refused large request now and give the pages back (gc, then glibc malloc_trim).
    Why: grpc.aio keeps an aborted call's exception, whose traceback holds the frames holding
    the request, in a reference cycle; only the cyclic collector frees it, and it rarely runs
    in a server that allocates few objects. Measured with 32 MiB refused requests: `msk serve`
    grew ~60 MB per request without this, and stays within a few MB of its start with it."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


class GrpcGuard:
    """Listens on `host:port`, forwards to tritonserver's gRPC at `upstream` (see module doc)."""

    def __init__(self, upstream: str, host: str, port: int, tls: ServerTls | None = None,
                 cancel_upstream: bool = False, upstream_credentials=None,
                 client_shm: bool = True) -> None:
        self.upstream = upstream
        self.client_shm = client_shm
        self.shm_policy = ShmPolicy()
        self.upstream_credentials = upstream_credentials
        """grpc.ChannelCredentials of the internal mutual TLS (None: a plain loopback Triton)."""
        self.accepting = True
        """False while msk serve warms up or drains: readiness is false, new inference is
        answered UNAVAILABLE (clients with several --url fail over), calls in flight finish."""
        self.inflight = 0
        self.cancel_upstream = cancel_upstream
        self.host = host
        self.port = port
        self.tls = tls
        self.refused = 0
        self.orphaned = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: aio.Server | None = None
        self._channel: aio.Channel | None = None
        self._orphans: set[asyncio.Future] = set()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    # -- lifecycle (the guard runs its own event loop in a thread) ------------------------------
    def start(self) -> GrpcGuard:
        self._thread = threading.Thread(target=self._run, name="grpc-guard", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"gRPC guard could not listen on {self.url}: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):       # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(60)

    def busy(self) -> int:
        """Inference calls still running upstream: in flight, or orphaned by their client."""
        return self.inflight + len(self._orphans)

    def drain(self, timeout: float) -> int:
        """Stop accepting inference, wait up to `timeout` s for the calls in flight (orphans
        too) to finish; returns how many were still running."""
        import time

        self.accepting = False
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.busy()

    def __enter__(self) -> GrpcGuard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - why: any failure is reported to start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        # so_reuseport 0: gRPC sets SO_REUSEPORT by default, and a second `msk serve` given the
        # same port then bound it too and shared its traffic; now the bind fails (port in use).
        limits = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                  ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)]
        channel_options = [("grpc.max_receive_message_length", -1),
                           ("grpc.max_send_message_length", -1)]
        if self.upstream_credentials is None:
            self._channel = aio.insecure_channel(self.upstream, options=channel_options)
        else:
            self._channel = aio.secure_channel(self.upstream, self.upstream_credentials,
                                               options=channel_options)
        self._server = aio.server(options=limits)
        self._server.add_generic_rpc_handlers((_Handler(self),))
        address = f"{self.host}:{self.port}"
        if self.tls is not None:
            bound = self._server.add_secure_port(address, self.tls.credentials())
        else:
            bound = self._server.add_insecure_port(address)
        if not bound:
            raise OSError(f"cannot bind {address}")
        self.port = bound
        await self._server.start()
        self._ready.set()
        await self._stop.wait()
        await self._server.stop(grace=5)
        if self._orphans:
            await asyncio.wait(self._orphans, timeout=30)
        await self._channel.close()

    # -- forwarding -------------------------------------------------------------------------------
    def _metadata(self, context: aio.ServicerContext) -> tuple[tuple[str, str], ...]:
        """The client's metadata, less hop-by-hop headers and any restricted-API key it sent."""
        return tuple((k, v) for k, v in (context.invocation_metadata() or ())
                     if not k.lower().startswith(_HOP_HEADERS))

    # -- the HTTP guard's way in (a thread of the HTTP server) -------------------------------------
    def call(self, name: str, raw: bytes, timeout: float = 600.0
             ) -> tuple[grpc.StatusCode | None, str, bytes]:
        """Send one unary call `name` (a serialized request) through this guard's checks and
        upstream channel, from any thread; returns (status code or None, details, response).
        Inference is counted in flight (the drain waits for it) and refused while not
        accepting; no upstream deadline is set unless the release cancels safely."""
        if self._loop is None:
            raise RuntimeError("the gRPC guard is not running")
        future = asyncio.run_coroutine_threadsafe(self._call(name, raw, timeout), self._loop)
        return future.result()

    async def _call(self, name: str, raw: bytes,
                    timeout: float) -> tuple[grpc.StatusCode | None, str, bytes]:
        method = f"/{SERVICE}/{name}"
        if name in CLOSED_METHODS or name in SHM_METHODS or name in STREAM_METHODS:
            return grpc.StatusCode.PERMISSION_DENIED, f"{name} is not offered here", b""
        if name not in INFER_METHODS:
            return await _finish(self._channel.unary_unary(method)(raw, timeout=timeout))
        if not self.accepting:
            return (grpc.StatusCode.UNAVAILABLE, "this server is not taking requests now "
                    "(starting or shutting down); try another", b"")
        checked = self._refusal(name, raw)
        if isinstance(checked, str):
            self.refused += 1
            return grpc.StatusCode.INVALID_ARGUMENT, checked, b""
        raw, asked = checked
        wait, expired = timeout, EXPIRED_DEADLINE
        if not self.cancel_upstream:          # enforced here, as for gRPC clients (_forward)
            wait, expired = front_door_wait(timeout, asked)
        self.inflight += 1
        try:
            call = self._channel.unary_unary(method)(
                raw, timeout=timeout if self.cancel_upstream else None)
            upstream = asyncio.ensure_future(_finish(call))
            try:
                return await asyncio.wait_for(asyncio.shield(upstream), wait)
            except TimeoutError:
                self._orphan(upstream)
                return (*expired, b"")
        finally:
            self.inflight -= 1

    def _checked(self, name: str, raw: bytes) -> tuple[bytes, float | None]:
        """Validate an inference request. Returns the bytes to forward and, where the release
        needs `grpc-no-cancel`, the client's `timeout` parameter in seconds, taken out of the
        request: the front door enforces it, Triton never sees one (module docstring)."""
        if name not in INFER_METHODS:
            return raw, None
        from google.protobuf.message import DecodeError
        from tritonclient.grpc import service_pb2

        try:
            request = service_pb2.ModelInferRequest.FromString(raw)
        except DecodeError as exc:
            raise RequestRefused("the request is not a valid ModelInferRequest (it could not be "
                                 "decoded)") from exc
        check_infer_request(request)
        if self.cancel_upstream or "timeout" not in request.parameters:
            return raw, None          # nothing to take out, or a fixed release: Triton gets it
        asked = request.parameters.pop("timeout").int64_param
        return request.SerializeToString(), max(asked, 0) / 1e6 or None

    def _refusal(self, name: str, raw: bytes) -> tuple[bytes, float | None] | str:
        """`_checked`'s answer, or the reason the request is refused. Why a value, not the
        exception: aborting inside `except` chains the exception (and through its traceback the
        decoded request) into a reference cycle that only the cyclic collector frees; refused
        32 MiB requests then kept `msk serve` ~70 MB larger each (measured)."""
        try:
            return self._checked(name, raw)
        except RequestRefused as exc:
            return str(exc)

    async def unary(self, method: str, raw: bytes, context: aio.ServicerContext) -> bytes:
        name = method.rsplit("/", 1)[1]
        if name in CLOSED_METHODS:
            self.refused += 1
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{name} is not offered by this server")
        if name in SHM_METHODS:
            return await self._shared_memory(method, name, raw, context)
        if not self.accepting:
            if name == "ServerReady":
                from tritonclient.grpc import service_pb2

                return service_pb2.ServerReadyResponse(ready=False).SerializeToString()
            if name in INFER_METHODS:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "this server is not taking "
                                    "requests now (starting or shutting down); try another")
        if name not in INFER_METHODS:
            return await self._forward(method, name, raw, context)
        self.inflight += 1
        try:
            return await self._forward(method, name, raw, context)
        finally:
            self.inflight -= 1

    async def _shared_memory(self, method: str, name: str, raw: bytes,
                             context: aio.ServicerContext) -> bytes:
        """Client shared memory: off unless --allow-client-shm, then `ShmPolicy`'s rules."""
        if not self.client_shm:
            self.refused += 1
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "client shared memory is off "
                                "on this server (msk serve --allow-client-shm turns it on); send "
                                "the tensors in the request")
        peer = identify(context.peer())
        refusal: ShmRefused | None = None
        try:
            self.shm_policy.check(name, raw, peer)
        except ShmRefused as exc:
            refusal = exc
        if refusal is not None:
            self.refused += 1
            code = (grpc.StatusCode.PERMISSION_DENIED if refusal.permission
                    else grpc.StatusCode.INVALID_ARGUMENT)
            message, refusal = str(refusal), None            # no cycle through the traceback
            await context.abort(code, message)
        response = await self._forward(method, name, raw, context)
        return self.shm_policy.answered(name, raw, response, peer)

    async def _forward(self, method: str, name: str, raw: bytes,
                       context: aio.ServicerContext) -> bytes:
        checked = self._refusal(name, raw)
        if isinstance(checked, str):
            self.refused += 1
            if len(raw) > RELEASE_AFTER_BYTES:       # once the aborted call is done with it
                asyncio.get_running_loop().call_later(0.2, release_refused_memory)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, checked)
        raw, asked = checked
        remaining = context.time_remaining()
        wait, expired = None, EXPIRED_DEADLINE
        if not self.cancel_upstream:      # enforced here; Triton gets no deadline (module doc)
            wait, expired = front_door_wait(remaining, asked)
            remaining = None
            if wait is not None and wait <= 0:
                await context.abort(*expired)
        call = self._channel.unary_unary(method)(raw, metadata=self._metadata(context),
                                                 timeout=remaining)
        upstream = asyncio.ensure_future(_finish(call))
        try:
            code, details, response = await asyncio.wait_for(asyncio.shield(upstream), wait)
        except TimeoutError:              # grpc-no-cancel: the client's time is up, not Triton's
            self._orphan(upstream)
            await context.abort(*expired)
        except asyncio.CancelledError:
            if self.cancel_upstream:      # a fixed release: the cancellation reaches Triton
                call.cancel()
                raise
            self._orphan(upstream)        # the client went away: Triton finishes unseen
            raise
        if code is not None:
            await context.abort(code, details)
        return response

    def _orphan(self, upstream: asyncio.Future) -> None:
        self.orphaned += 1
        self._orphans.add(upstream)
        upstream.add_done_callback(self._orphans.discard)

    async def stream(self, method: str, requests: AsyncIterator[bytes],
                     context: aio.ServicerContext) -> AsyncIterator[bytes]:
        refused: list[str] = []
        if not self.accepting:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this server is not taking "
                                "requests now (starting or shutting down); try another")

        async def checked() -> AsyncIterator[bytes]:
            async for raw in requests:
                try:
                    yield self._checked("ModelStreamInfer", raw)[0]   # `timeout` dropped
                except RequestRefused as exc:
                    self.refused += 1
                    refused.append(str(exc))
                    return

        call = self._channel.stream_stream(method)(checked(), metadata=self._metadata(context))
        try:
            async for response in call:
                yield response
        except aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details())
        if refused:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused[0])


EXPIRED_DEADLINE = (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
EXPIRED_TIMEOUT = (grpc.StatusCode.UNAVAILABLE, "Request timeout expired (the request's "
                   "`timeout` parameter, enforced by msk serve's front door)")
"""What the front door answers when a client's time runs out (`grpc-no-cancel`): the code
Triton itself would give, so clients classify it as before (clients/errors.py)."""


def front_door_wait(deadline: float | None, asked: float | None
                    ) -> tuple[float | None, tuple[grpc.StatusCode, str]]:
    """How long the guard waits for Triton (seconds, None: no bound) and what it answers after:
    the client's deadline, or its `timeout` parameter where that is shorter. The parameter
    bounded only the wait in a model queue at Triton; here it bounds the whole call, which
    answers a client no later than it asked."""
    if asked is not None and (deadline is None or asked < deadline):
        return asked, EXPIRED_TIMEOUT
    return deadline, EXPIRED_DEADLINE


async def _finish(call) -> tuple[grpc.StatusCode | None, str, bytes]:
    try:
        return None, "", await call
    except aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", b""


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, guard: GrpcGuard) -> None:
        self.guard = guard

    def service(self, details: grpc.HandlerCallDetails):
        method = details.method
        if not method.startswith(f"/{SERVICE}/"):
            return None
        if method.rsplit("/", 1)[1] in STREAM_METHODS:
            return grpc.stream_stream_rpc_method_handler(
                functools.partial(self.guard.stream, method))
        return grpc.unary_unary_rpc_method_handler(functools.partial(self.guard.unary, method))
