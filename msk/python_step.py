"""The request loop of every python-backend step this project exports (`wrist_postprocess`,
`mura_drift`), vendored into each model version by `export.python_step`.

Why one loop: both steps must treat a batch the same way: a request whose client is gone or
whose deadline passed is not run (CANCELLED), and one bad request fails alone while the others
in the batch are answered. `pb_utils` is passed in because it exists only inside Triton's stub.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def execute_each(requests: Sequence[Any], one: Callable[[Any], Any], model: str,
                 pb_utils: Any) -> list:
    """`one(request)` for every request of a batch, in order; a response with an error
    naming `model` for a cancelled request or one whose `one` raised."""
    responses = []
    for request in requests:
        if request.is_cancelled():  # client gone or deadline passed: do not run it
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"{model}: request cancelled; not run", pb_utils.TritonError.CANCELLED)))
            continue
        try:
            responses.append(one(request))
        except Exception as exc:  # noqa: BLE001 - why: one bad request fails alone
            # (any error: bad tensor, shape, decode); the others in the batch still run
            responses.append(pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"{model}: {exc}")))
    return responses
