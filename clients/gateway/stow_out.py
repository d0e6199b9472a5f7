"""Result delivery by DICOMweb STOW-RS (dicomweb-client) to `destination_dicomweb`.

Same contract as the C-STORE SCU (`scu.send`): every object of a batch is stored or
`DeliveryError` is raised, and the queue retries the batch (SOP Instance UIDs are kept, so a
PACS that stored part of it just replaces those). Unreachable, timing out or answering 5xx /
429 = an outage (retried for as long as it lasts); 4xx or per-instance failures = a failure
(counts towards max_attempts). dicomweb-client's own retrying is switched off: the queue owns
retries.

Credentials come from the environment, never from flags or config files (they would end up in
shell history, `--print-config` and process listings): `MSK_DICOMWEB_TOKEN` (bearer) or
`MSK_DICOMWEB_USER` + `MSK_DICOMWEB_PASSWORD` (basic).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from pydicom import dcmread

from clients.gateway.phi import uid_tag
from clients.gateway.scu import DeliveryError

log = logging.getLogger("msk.gateway.stow")

TOKEN_ENV = "MSK_DICOMWEB_TOKEN"
USER_ENV = "MSK_DICOMWEB_USER"
PASSWORD_ENV = "MSK_DICOMWEB_PASSWORD"
OUTAGE_STATUSES = {429, 502, 503, 504}


def session_from_env(env: Mapping[str, str] | None = None, ca: Path | None = None):
    """A requests session with the destination's credentials (bearer wins over basic)."""
    import requests

    env = os.environ if env is None else env
    session = requests.Session()
    if env.get(TOKEN_ENV):
        session.headers["Authorization"] = f"Bearer {env[TOKEN_ENV]}"
    elif env.get(USER_ENV):
        session.auth = (env[USER_ENV], env.get(PASSWORD_ENV, ""))
    if ca is not None:
        session.verify = str(ca)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override Session.verify (set on
        # many hosts, e.g. this project's CI machines): without this the CA would be ignored
        session.trust_env = False
    return session


def send_stow(paths: list[Path], url: str, timeout_s: float = 30.0,
              ca: Path | None = None) -> list[str]:
    """STOW-RS every file to the DICOMweb service at `url`; returns the SOP UIDs stored."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    datasets = [dcmread(p) for p in paths]
    client = DICOMwebClient(url, session=session_from_env(ca=ca), timeout=timeout_s)
    client.set_http_retry_params(retry=False)
    try:
        response = client.store_instances(datasets)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        raise DeliveryError(f"STOW-RS to {url} answered HTTP {status}",
                            outage=status in OUTAGE_STATUSES) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise DeliveryError(f"STOW-RS to {url} unreachable ({type(exc).__name__})",
                            outage=True) from None
    failed = list(response.get("FailedSOPSequence", []) or []) if response is not None else []
    if failed:
        first = failed[0]
        raise DeliveryError(
            f"STOW-RS to {url}: {len(failed)} of {len(datasets)} object(s) refused (first: "
            f"{uid_tag(first.get('ReferencedSOPInstanceUID', '?'))}, reason "
            f"0x{int(first.get('FailureReason', 0)):04X})")
    log.info("delivered %d object(s) by STOW-RS to %s", len(datasets), url)
    return [str(ds.SOPInstanceUID) for ds in datasets]
