"""Result delivery: C-STORE SCU to the destination AE (the PACS), optionally over DICOM TLS.

Delivery either succeeds for every object of a batch or raises `DeliveryError`, and the queue
retries the whole batch: objects keep their SOP Instance UIDs across retries, so a PACS that
already stored some of them just replaces them.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from clients.gateway.config import Destination
from clients.gateway.phi import uid_tag

log = logging.getLogger("msk.gateway.scu")

OK_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
"""Success and the storage warnings (coercion, elements discarded): the object was stored."""


class DeliveryError(RuntimeError):
    """The destination did not accept every result object (reason in the message).
    `outage`: it could not be reached at all (as opposed to rejecting or refusing)."""

    def __init__(self, message: str, outage: bool = False) -> None:
        super().__init__(message)
        self.outage = outage


def send(paths: list[Path], destination: Destination, calling_ae: str,
         timeout_s: float = 30.0, tls: ssl.SSLContext | None = None) -> list[str]:
    """C-STORE every file to `destination`; returns the SOP Instance UIDs delivered.
    `tls`: a client context (clients.gateway.tls) = DICOM TLS, the host name verified."""
    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=(tls, destination.host) if tls is not None else None)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise DeliveryError(f"association with {destination} rejected")
        why = "aborted" if assoc.is_aborted else "failed (unreachable)"
        raise DeliveryError(f"association with {destination} {why}", outage=True)
    sent: list[str] = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code not in OK_STATUSES:
                raise DeliveryError(
                    f"{destination} answered C-STORE of {uid_tag(ds.SOPInstanceUID)} with "
                    + (f"status 0x{code:04X}" if code >= 0 else "no response"))
            sent.append(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("delivered %d object(s) to %s", len(sent), destination)
    return sent
