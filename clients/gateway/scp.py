"""C-STORE / C-ECHO receiver: accepts what a PACS or modality sends and queues it durably.

Every storage SOP class and every transfer syntax is accepted: a PACS forwarding a whole study
also sends dose reports, presentation states or our own SRs, and refusing those at association
time would make the sender report a failed transfer. What cannot be scored is skipped later,
with a log line saying why. Success (0x0000) is answered only after the instance is on disk.

Who may send is not open: associations from calling AE titles outside the allow-list are
rejected at association time (pynetdicom's `require_calling_aet`), and an entry bound to an
address (`AET@ADDRESS`) refuses stores from that title at any other address (status 0x0124,
"Refused: not authorized"). With a certificate the SCP speaks DICOM TLS only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from clients.gateway.config import GatewayConfig
from clients.gateway.phi import uid_tag
from clients.gateway.queue import StudyQueue

log = logging.getLogger("msk.gateway.scp")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_NOT_AUTHORIZED = 0x0124


class StoreSCP:
    """The listening AE; `start()` returns once it accepts associations."""

    def __init__(self, config: GatewayConfig, queue: StudyQueue,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.config = config
        self.queue = queue
        self.on_stored = on_stored
        self.ae = AE(ae_title=config.ae_title)
        config.check_senders()
        self.ae.require_called_aet = config.require_called_aet
        self.peers = config.calling_peers
        if self.peers:
            self.ae.require_calling_aet = sorted({p.ae_title for p in self.peers})
        self.ae.network_timeout = config.dicom_timeout_s
        self.ae.dimse_timeout = config.dicom_timeout_s
        self.ae.maximum_associations = 8
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self._server = None

    def start(self) -> None:
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        ssl_context = None
        if self.config.dicom_tls_cert and self.config.dicom_tls_key:
            from clients.gateway.tls import server_context

            ssl_context = server_context(self.config.dicom_tls_cert, self.config.dicom_tls_key,
                                         self.config.dicom_tls_ca)
        self._server = self.ae.start_server((self.config.host, self.config.port), block=False,
                                            evt_handlers=handlers, ssl_context=ssl_context)
        log.info("listening as %s on %s:%d%s (calling AEs: %s)", self.config.ae_title,
                 self.config.host, self.config.port, " with DICOM TLS" if ssl_context else "",
                 ",".join(self.config.allowed_calling_aes) or "any (--accept-any-calling-ae)")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def authorized(self, ae_title: str, address: str) -> bool:
        """Is (calling AE title, peer address) allowed? Titles without an address: any."""
        if not self.peers:
            return self.config.accept_any_calling_ae
        return any(p.ae_title == ae_title and p.address in (None, address) for p in self.peers)

    def _on_echo(self, event: evt.Event) -> int:
        log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title
        address = event.assoc.requestor.address
        if not self.authorized(calling, address):
            log.warning("C-STORE from %s at %s refused: not an allowed sender", calling, address)
            return STATUS_NOT_AUTHORIZED
        try:
            ds = event.dataset
            study_uid = str(ds.StudyInstanceUID)
            sop_uid = str(ds.SOPInstanceUID)
        except Exception as exc:  # why: pydicom decodes lazily, any type; refuse this one
            log.warning("C-STORE from %s refused: dataset without Study/SOP Instance UID (%s)",
                        calling, type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        try:
            self.queue.store(study_uid, sop_uid, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            log.error("C-STORE from %s: cannot persist instance %s (%s)", calling,
                      uid_tag(sop_uid), exc.strerror)
            # disk full, quota, I/O error: all mean "cannot store now", the sender may retry
            return STATUS_OUT_OF_RESOURCES
        sop_class = getattr(event.request.AffectedSOPClassUID, "name", "unknown")
        log.info("stored %s of study %s (%s) from %s", uid_tag(sop_uid), uid_tag(study_uid),
                 sop_class, calling)
        if self.on_stored:
            self.on_stored()
        return STATUS_SUCCESS
