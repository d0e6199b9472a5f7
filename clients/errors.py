"""Why a request to Triton failed, as one reason code decided in ONE place.

Why codes and not message text: the batch scorer, the gateway and the web app each used to match
their own lists of error strings ("not found", `startswith("server")`), which disagreed and broke
whenever Triton reworded a message. Every client now asks `request_reason(exc)` and decides
what to do (retry, dead-letter, show the user) from the code (`is_retryable`). Three Triton 2.51
answers do read the message text, because their status code says the wrong thing: a full queue
and an expired queue timeout (UNAVAILABLE, like an outage) and a dead model process (INTERNAL,
like a model failing on this input) - `TEXT_EXCEPTIONS`, each documented - plus the
shared-memory "in use" refusal (`shared_memory_in_use`). Nowhere else.

Reasons of an *input* (unreadable file, too small...) are `msk.imaging.RadiographError.reason`
codes; the ones here are about the server and the transport. Both end up in a row's
`error_reason` (see `clients.rows`).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """What went wrong with a request, as the rows' `error_reason` spells it."""

    SERVER_UNAVAILABLE = "server_unavailable"
    """Not reachable, connection lost, model not (yet) ready: a (re)starting server."""
    SERVER_OVERLOADED = "server_overloaded"
    """The server answered, but refused the request from a full queue."""
    MODEL_NOT_FOUND = "model_not_found"
    """The server does not know the model (it is still loading its repository, or lacks it)."""
    TIMEOUT = "timeout"
    """No answer within the client's deadline."""
    REJECTED_BY_SERVER = "rejected_by_server"
    """The server refused this request's contents (shape, type): sending it again cannot help."""
    INFERENCE_FAILED = "inference_failed"
    """The model failed while running (an internal error for this request)."""
    BAD_RESPONSE = "bad_response"
    """An answer the client cannot parse (wrong outputs, malformed provenance)."""
    INPUT_NOT_FOUND = "input_not_found"
    """The input could not even be located (a path or pattern matching nothing)."""
    DESTINATION_UNREACHABLE = "destination_unreachable"
    """The gateway could not reach the PACS / DICOMweb destination to deliver a result."""
    DELIVERY_REFUSED = "delivery_refused"
    """The destination answered but did not accept every result object."""


RETRYABLE: frozenset[str] = frozenset({
    Reason.SERVER_UNAVAILABLE, Reason.SERVER_OVERLOADED, Reason.MODEL_NOT_FOUND, Reason.TIMEOUT,
})
"""Reasons that say nothing about the input: the same request may succeed later or elsewhere."""

_BY_STATUS: dict[str, Reason] = {
    "UNAVAILABLE": Reason.SERVER_UNAVAILABLE,
    "CANCELLED": Reason.SERVER_UNAVAILABLE,
    "ABORTED": Reason.SERVER_UNAVAILABLE,
    "UNKNOWN": Reason.SERVER_UNAVAILABLE,        # a connection reset mid-stream
    "RESOURCE_EXHAUSTED": Reason.SERVER_OVERLOADED,
    "DEADLINE_EXCEEDED": Reason.TIMEOUT,
    "NOT_FOUND": Reason.MODEL_NOT_FOUND,
    "INVALID_ARGUMENT": Reason.REJECTED_BY_SERVER,
    "FAILED_PRECONDITION": Reason.REJECTED_BY_SERVER,
    "OUT_OF_RANGE": Reason.REJECTED_BY_SERVER,
    "UNIMPLEMENTED": Reason.REJECTED_BY_SERVER,
}
"""gRPC status code (as tritonclient reports it, without the `StatusCode.` prefix) -> reason."""

TEXT_EXCEPTIONS: tuple[tuple[str, str, Reason], ...] = (
    ("UNAVAILABLE", "exceeds maximum queue size", Reason.SERVER_OVERLOADED),
    ("UNAVAILABLE", "request timeout expired", Reason.SERVER_OVERLOADED),
    ("INTERNAL", "is not healthy", Reason.SERVER_UNAVAILABLE),
)
"""The only places where Triton 2.51's status code alone says the wrong thing, each documented:
- a rejection by the bounded queue (`default_queue_policy`) comes with the same UNAVAILABLE code
  as an outage; both are retried, the split only decides whether a summary counts an overload;
- a dead model process ("Stub process '...' is not healthy") answers INTERNAL, like a model
  failing on this input, until `msk serve` restarts the server: the request is not at fault and
  must be retried (later, or on another replica)."""


def status_code(exc: BaseException) -> str | None:
    """The gRPC status name of a tritonclient exception ("UNAVAILABLE"), else None."""
    status = getattr(exc, "status", None)
    status = status() if callable(status) else status
    if not status:
        return None
    return str(status).removeprefix("StatusCode.")


def request_reason(exc: BaseException) -> Reason:
    """The reason code of an exception raised by a tritonclient call (sync or asyncio)."""
    code = status_code(exc)
    if code is not None:
        text = _message(exc).lower()
        for status, marker, reason in TEXT_EXCEPTIONS:
            if code == status and marker in text:
                return reason
        return _BY_STATUS.get(code, Reason.INFERENCE_FAILED)
    if isinstance(exc, TimeoutError):
        return Reason.TIMEOUT
    if isinstance(exc, OSError):          # connection refused/reset below the gRPC layer
        return Reason.SERVER_UNAVAILABLE
    return Reason.INFERENCE_FAILED


def _message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return (message() if callable(message) else str(exc)) or ""


def shared_memory_in_use(exc: BaseException) -> bool:
    """True when Triton refused to unregister a shared-memory region because a request still
    uses it. Triton 2.51 gives this no status code of its own (only its text says "in use"), so
    the one text test lives here, beside the other documented exceptions."""
    return "in use" in _message(exc).lower()


def is_retryable(reason: str | None) -> bool:
    """True when `reason` says nothing about the input (retry later, or on another endpoint)."""
    return reason in RETRYABLE


def error_text(exc: BaseException) -> str:
    """One line for a tritonclient exception (its message without the gRPC boilerplate)."""
    text = _message(exc)
    return (str(text).strip().splitlines() or [type(exc).__name__])[0]


class TransientError(RuntimeError):
    """The server could not answer now; the same study may succeed later (the gateway's; the
    clients' requests end in `RequestFailed`, retried by `clients.transport`).

    `reason`: the `Reason` code rows and the audit record. `outage`: the server is unreachable
    or not ready (retried for as long as the outage budget allows) rather than one failed
    request (which counts towards a retry limit)."""

    def __init__(self, message: str, reason: str = Reason.SERVER_UNAVAILABLE, *,
                 outage: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.outage = outage

    @property
    def overloaded(self) -> bool:
        return self.reason == Reason.SERVER_OVERLOADED


class RequestFailed(RuntimeError):
    """A request that will not be answered: the server refused it for a reason that retrying
    cannot fix, its answer could not be read, or the run's outage budget is spent
    (`clients.transport`). The one error every client's request path ends in, so the MURA
    client, the batch scorer and the wrist client report a failure the same way.

    `reason`: the `Reason` code for the row. `attempts`: requests sent for it (0: refused
    without sending, the circuit being open). `latency_s`: from the first attempt to the end.
    """

    def __init__(self, reason: str, message: str, *, attempts: int = 0,
                 latency_s: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts
        self.latency_s = latency_s
