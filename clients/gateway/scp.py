"""C-STORE / C-ECHO receiver: accepts what a PACS or modality sends and queues it durably.

Every storage SOP class and every transfer syntax is accepted: a PACS forwarding a whole study
also sends dose reports, presentation states or our own SRs, and refusing those at association
time would make the sender report a failed transfer. What cannot be scored is skipped later,
with a log line saying why. Success (0x0000) is answered only after the instance is on disk.

Who may send is not open: associations from calling AE titles outside the allow-list are
rejected at association time (pynetdicom's `require_calling_aet`), and an entry bound to an
address (`AET@ADDRESS`) refuses stores from that title at any other address (status 0x0124,
"Refused: not authorized"). With a certificate the SCP speaks DICOM TLS only.

Before any AE title is known, connections are admitted by address (`Admission`): at most
`max_associations_per_peer` from one address and `max_associations` in all, of which
`reserved_associations` only for addresses the allow-list pins (`AET@ADDRESS`); extra ones are
closed at accept. A connection that has not sent its A-ASSOCIATE-RQ (and finished its TLS
handshake) within `artim_timeout_s` is closed, so idle sockets cannot keep the PACS out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from clients.gateway.config import GatewayConfig
from clients.gateway.phi import uid_tag
from clients.gateway.queue import StudyQueue

ACCEPTED_TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES
                              if ts != DeflatedExplicitVRLittleEndian]
"""Every transfer syntax but Deflated: pynetdicom inflates a deflated C-STORE with no cap (1.5 MB
became 1.5 GB), so the association negotiates another syntax (every sender must also offer an
uncompressed one) and the sender inflates its own data."""

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
        self.ae.acse_timeout = config.artim_timeout_s    # the acceptor's ARTIM timer
        # Admission (below) already caps connections; pynetdicom's own count (which includes
        # silent sockets and answers "Local Limit Exceeded") must never be the tighter one.
        self.ae.maximum_associations = config.max_associations
        self.admission = Admission.from_config(config)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self._server = None

    def start(self) -> None:
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        ssl_context = None
        if self.config.dicom_tls_cert and self.config.dicom_tls_key:
            from clients.gateway.tls import server_context

            ssl_context = server_context(self.config.dicom_tls_cert, self.config.dicom_tls_key,
                                         self.config.dicom_tls_ca)
        self._server = self.ae.make_server(
            (self.config.host, self.config.port), evt_handlers=handlers,
            ssl_context=ssl_context, server_class=AdmittingServer, admission=self.admission,
            artim_timeout_s=self.config.artim_timeout_s)
        # as AE.start_server does: AssociationServer.shutdown() removes itself from this list
        self.ae._servers.append(self._server)
        threading.Thread(target=make_target(self._server.serve_forever), daemon=True,
                         name=f"AcceptorServer@{self.config.port}").start()
        log.info("listening as %s on %s:%d%s (calling AEs: %s)", self.config.ae_title,
                 self.config.host, self.config.port, " with DICOM TLS" if ssl_context else "",
                 ",".join(self.config.allowed_calling_aes) or "any (--accept-any-calling-ae)")
        log.info("connection limits: %s", self.admission)

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


# ---------------------------------------------------------------------------------------------
# Admission: who may hold a connection, and for how long before associating
# ---------------------------------------------------------------------------------------------
def canonical_address(host: str) -> str:
    """An IP address as the allow-list is compared with it: compressed, and an IPv4 peer on a
    dual-stack socket (`::ffff:a.b.c.d`) as plain IPv4. Anything else is kept as written."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


class Admission:
    """Live connections per peer address, and whether one more may open.

    Counted from accept until the connection's association thread ends, in every state: a
    silent socket holds a slot as surely as a busy association. AE titles come only with the
    A-ASSOCIATE-RQ, so the reserve is for pinned addresses; titles without one share the rest.
    """

    def __init__(self, limit: int, per_peer: int, reserved: int, pinned: Iterable[str]) -> None:
        self.limit = limit
        self.per_peer = per_peer
        self.reserved = reserved
        self.pinned = frozenset(canonical_address(a) for a in pinned)
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Admission:
        pinned = [p.address for p in config.calling_peers if p.address]
        return cls(config.max_associations, config.max_associations_per_peer,
                   config.reserved_associations, pinned)

    @property
    def shared(self) -> int:
        """Slots open to addresses the allow-list does not pin. With no pinned address there is
        nobody to keep a reserve for: everyone shares every slot."""
        return self.limit - self.reserved if self.pinned else self.limit

    def __str__(self) -> str:
        pinned = ", ".join(sorted(self.pinned))
        kept = f"{self.reserved} kept for {pinned}" if pinned else "no address pinned, no reserve"
        return f"{self.limit} in all, {self.per_peer} per address, {kept}"

    def admit(self, address: str) -> str | None:
        """Take a slot for `address`: None when admitted, else why not (for the log)."""
        with self._lock:
            reason = self._refusal(address)
            if reason is None:
                self._open[address] += 1
            return reason

    def release(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def open_count(self, address: str | None = None) -> int:
        """Connections held now, from `address` or from everyone."""
        with self._lock:
            return self._open[address] if address else sum(self._open.values())

    def _refusal(self, address: str) -> str | None:
        total = sum(self._open.values())
        if self._open[address] >= self.per_peer:
            return f"{self.per_peer} connection(s) from this address already open"
        if total >= self.limit:
            return f"all {self.limit} connection slots in use"
        if address not in self.pinned and total - self._pinned_open() >= self.shared:
            return (f"the {self.shared} slot(s) for addresses not pinned in the allow-list are "
                    "in use")
        return None

    def _pinned_open(self) -> int:
        return sum(n for address, n in self._open.items() if address in self.pinned)


class _RefusalLog:
    """One warning per `every` seconds at most: a flood of refused sockets must not become a
    flood of log lines (the count of the quiet ones goes with the next line)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._next = 0.0
        self._quiet = 0

    def note(self, address: str, reason: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._quiet += 1
            return
        log.warning("connection from %s closed at accept: %s%s", address, reason,
                    f" ({self._quiet} more refused since the last such line)"
                    if self._quiet else "")
        self._next, self._quiet = now + self.every, 0


def _shutdown(sock: socket.socket) -> None:
    """Cut a connection another thread may be blocked reading: shutdown wakes that read, close
    would not (and could hand its descriptor to the next accept). pynetdicom closes it after.
    The plain-socket method, so an SSLSocket's TLS state is left to its owner."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class AdmittingServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, plus admission at accept and the TLS handshake moved off
    the accept loop (pynetdicom does it in `get_request`, where one silent TLS client blocks
    every other sender)."""

    daemon_threads = True
    """A connection thread lives as long as its association: stopping must not wait for them."""
    request_queue_size = 64
    """Listen backlog (socketserver's default is 5): a burst of connections that admission
    closes at once must not make the kernel drop an allowed sender's SYN meanwhile."""

    def __init__(self, *args: Any, admission: Admission, artim_timeout_s: float,
                 **kwargs: Any) -> None:
        self.admission = admission
        self.artim_timeout_s = artim_timeout_s
        self._refusals = _RefusalLog()
        super().__init__(*args, request_handler=ConnectionHandler, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = canonical_address(str(client_address[0]))
        reason = self.admission.admit(address)
        if reason is not None:
            self._refusals.note(address, reason)
        return reason is None

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:   # no thread started: nobody else gives the slot back
            self.admission.release(canonical_address(str(client_address[0])))
            raise


class ConnectionHandler(RequestHandler):
    """Runs one admitted connection: TLS handshake, then the association, holding the
    admission slot until the association's thread ends; ARTIM enforced on the socket itself,
    because pynetdicom's timer cannot stop a peer that sent half a PDU and went silent."""

    server: AdmittingServer

    @property
    def peer(self) -> str:
        return canonical_address(str(self.client_address[0]))

    def handle(self) -> None:
        deadline = time.monotonic() + self.server.artim_timeout_s
        if not self._handshake():
            return
        # a stall inside a PDU (or a peer that stops reading) ends the connection
        self.request.settimeout(self.ae.network_timeout)
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join(max(0.0, deadline - time.monotonic()))
        if assoc.is_alive() and assoc.requestor.primitive is None:
            log.info("connection from %s closed: no A-ASSOCIATE-RQ within %.1fs (ARTIM)",
                     self.peer, self.server.artim_timeout_s)
            _shutdown(self.request)
        assoc.join()

    def finish(self) -> None:
        self.server.admission.release(self.peer)

    def _handshake(self) -> bool:
        """TLS handshake in this connection's thread, bounded by the ARTIM time."""
        sock = self.request
        if not isinstance(sock, ssl.SSLSocket):
            return True
        sock.settimeout(self.server.artim_timeout_s)
        try:
            sock.do_handshake()
        except (OSError, ValueError) as exc:   # SSLError and TimeoutError are OSErrors
            log.warning("connection from %s closed: TLS handshake failed (%s)", self.peer,
                        exc.__class__.__name__ if isinstance(exc, TimeoutError) else exc)
            self.server.shutdown_request(sock)
            return False
        return True
