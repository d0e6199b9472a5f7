"""A gRPC pass-through in front of tritonserver that does not pass client cancellations on.

Why: tritonserver 2.51 (24.10) segfaults when a client goes away while its request is in flight
(SIGSEGV in `TRITONBACKEND_ResponseSend`, reproduced here by SIGKILLing `msk score` clients
mid-request: tests/test_kill_stress.py). The crash lies in Triton's request-cancellation path
(gRPC frontend and core; upstream server issues #8034 and #7368, fixed by server PRs #7840 and
#8078, i.e. releases 24.12/25.04 onwards, later than the binary the PyPI wheel ships). Triton
only cancels a request when its gRPC call is cancelled, so this proxy forwards every call as raw
bytes and, when the client cancels or disconnects, lets the upstream call finish and drops the
answer: Triton never sees a cancellation. What abandoned work costs is bounded by the models'
queue policies (bounded queues with timeouts), not by cancellation.

Everything else is passed through unchanged: every unary method of Triton's GRPCInferenceService
(inference, health, metadata, statistics, shared-memory registration...) and the streaming
method, with status codes and details; message sizes are not limited here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

log = logging.getLogger("msk.grpc_proxy")
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class _Forward(grpc.GenericRpcHandler):
    """Route every method to the same method upstream, bytes in and bytes out."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method.endswith("Stream") or method.endswith("StreamInfer"):
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    def _unary(self, method: str):
        upstream = self.channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            call = asyncio.ensure_future(_complete(upstream(request)))
            try:
                # shield: a cancelled client cancels this handler, never the upstream call
                code, details, reply = await asyncio.shield(call)
            except asyncio.CancelledError:
                call.add_done_callback(_log_abandoned)
                raise
            if code is not None:
                await context.abort(code, details)
            return reply

        return forward

    def _stream(self, method: str):
        upstream = self.channel.stream_stream(method)

        async def forward(requests, context: grpc.aio.ServicerContext):
            async for reply in upstream(requests):
                yield reply

        return forward


async def _complete(call) -> tuple[grpc.StatusCode | None, str, bytes]:
    """Await an upstream call; errors become (code, details, b"")."""
    try:
        return None, "", await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", b""


def _log_abandoned(task: asyncio.Future) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        code = task.result()[0]
        log.debug("request of a departed client finished upstream (%s)", code or "OK")


async def serve(listen: str, upstream: str, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Forward gRPC calls from `listen` (host:port) to `upstream` until `stop` is set."""
    channel = grpc.aio.insecure_channel(upstream, options=UNLIMITED)
    server = grpc.aio.server(handlers=[_Forward(channel)], options=UNLIMITED)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop is not None else server.wait_for_termination())
    finally:
        await server.stop(grace=5)
        await channel.close()
