"""One queued study (a folder of DICOM files) -> `ScoredStudy`, on one or several Triton
servers: the readiness check, the clients, and `score`, which only chains the typed steps of
`clients.gateway.steps` (select -> score -> detect -> provenance -> call). What each step does,
and which failures are transient or permanent, is said there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from clients.errors import Reason, TransientError, error_text
from clients.failover import url_list
from clients.gateway.steps import (
    PermanentError,
    ScoredStudy,
    call_study,
    collect_provenance,
    detect_structures,
    score_images,
    select_images,
)
from clients.mura import MuraClient
from clients.routing import Router
from clients.tls import GrpcTls, client_kwargs
from clients.wrist import WristClient
from msk.constants import MURA_ENSEMBLE_MODEL, WRIST_DETECT_MODEL

log = logging.getLogger("msk.gateway.scoring")

__all__ = ["PermanentError", "ScoredStudy", "StudyScorer", "TransientError"]


class StudyScorer:
    """Scores studies on one or several Triton servers (requests spread over them, failing over
    as `msk score` does); discovers `wrist_detect` on every readiness check."""

    def __init__(self, triton_url: str | Sequence[str], router: Router, wrist: str = "auto",
                 timeout_s: float = 120.0, tls: GrpcTls | None = None,
                 ood_policy: str = "refuse") -> None:
        import tritonclient.grpc as grpcclient

        self.urls = url_list(triton_url)
        self.url = ", ".join(self.urls)
        self.router = router
        self.wrist_mode = wrist
        self.timeout_s = timeout_s
        self.tls = tls
        self._control = {u: grpcclient.InferenceServerClient(u, **client_kwargs(tls))
                         for u in self.urls}
        self._mura = MuraClient(self.urls, timeout_s=timeout_s, tls=tls, ood_policy=ood_policy)
        self._wrist = WristClient(self.urls, timeout_s=timeout_s, tls=tls)  # used when routed

    def close(self) -> None:
        self._mura.close()
        self._wrist.close()
        for client in self._control.values():
            client.close()

    def check_ready(self) -> None:
        """Raise TransientError unless some endpoint has the ensemble ready; update routing.

        The wrist detector is used when every READY endpoint has it (a request may go to any).
        """
        from tritonclient.utils import InferenceServerException

        ready: list[str] = []
        problems: list[str] = []
        wrist = self.wrist_mode != "off"
        for url, control in self._control.items():
            try:
                if not (control.is_server_ready() and control.is_model_ready(
                        MURA_ENSEMBLE_MODEL)):
                    problems.append(f"{url}: {MURA_ENSEMBLE_MODEL} not ready")
                    continue
            except InferenceServerException as exc:
                problems.append(f"{url}: unreachable ({error_text(exc)})")
                continue
            ready.append(url)
            if wrist:
                try:  # a repository without the detector answers "unknown model": no outage
                    wrist = bool(control.is_model_ready(WRIST_DETECT_MODEL))
                except InferenceServerException:
                    wrist = False
        if not ready:
            raise TransientError(f"Triton not ready: {'; '.join(problems)}", outage=True,
                                 reason=Reason.SERVER_UNAVAILABLE)
        if self.wrist_mode == "on" and not wrist:
            raise TransientError(f"{WRIST_DETECT_MODEL} required (wrist=on) but not ready",
                                 outage=True, reason=Reason.SERVER_UNAVAILABLE)
        self.router.wrist_detect_available = wrist

    # ------------------------------------------------------------------------------------
    def score(self, files: list[Path]) -> ScoredStudy | None:
        """Score one study batch; None when nothing in it is meant to be scored."""
        self.check_ready()
        selection = select_images(files, self.router)
        if not selection.candidates:
            return None
        mura = score_images(self._mura, selection.candidates)
        wrists = detect_structures(self._wrist, selection.wrists)
        models = collect_provenance(mura, wrists.values())
        return call_study(selection, mura, wrists, models)
