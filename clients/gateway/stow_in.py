"""DICOMweb STOW-RS receiver: `POST /dicomweb/studies` beside the DIMSE port.

Many PACS push by DICOMweb instead of (or beside) C-STORE. Instances received here take the
same path as C-STORE ones: written durably into the queue's `incoming/` before the sender gets
its answer, then the same stability rule, scoring, PHI-free logging and audit.

Who may send: a client whose address is in `dicomweb_allowed_clients`, or one that presents a
bearer token listed in the environment variable `MSK_GATEWAY_STOW_TOKENS` (comma-separated;
never in flags or config files), or anyone with `accept_any_calling_ae`. Nothing configured =
the receiver refuses to start. With `dicom_tls_cert`/`dicom_tls_key` it serves HTTPS only
(mutual TLS when `dicom_tls_ca` is given). Answers follow PS3.18 10.5: 200 all stored, 202
some failed, 409 none stored, with a DICOM JSON body listing Referenced/Failed SOP Sequence.
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

from pydicom import Dataset, dcmread

from clients.gateway.config import GatewayConfig
from clients.gateway.phi import uid_tag
from clients.gateway.queue import StudyQueue
from msk.constants import MAX_UPLOAD_REQUEST_BYTES

log = logging.getLogger("msk.gateway.stow")

TOKENS_ENV = "MSK_GATEWAY_STOW_TOKENS"
PATH_PREFIX = "/dicomweb/studies"
MAX_BODY_BYTES = MAX_UPLOAD_REQUEST_BYTES
"""Largest STOW-RS request accepted (checked from Content-Length before reading): the same
request limit as the web app's uploads; each instance is then held to the reader's limits."""
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_STUDY_MISMATCH = 0xA900
"""Used for an instance of another study than the one in the URL (PS3.18 10.5.3.1.2)."""


def tokens_from_env(env: dict[str, str] | None = None) -> list[str]:
    raw = (os.environ if env is None else env).get(TOKENS_ENV, "")
    return [t.strip() for t in raw.split(",") if t.strip()]


class StowServer:
    """The HTTP(S) server; `start()` returns once it accepts connections."""

    def __init__(self, config: GatewayConfig, queue: StudyQueue) -> None:
        self.config = config
        self.queue = queue
        self.tokens = tokens_from_env()
        self.clients = set(config.dicomweb_allowed_clients)
        if not (self.tokens or self.clients or config.accept_any_calling_ae):
            raise ValueError(
                "STOW-RS needs allowed senders: --dicomweb-allowed-client ADDRESS, tokens in "
                f"{TOKENS_ENV}, or --accept-any-calling-ae")
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    def start(self) -> None:
        handler = type("StowHandler", (_Handler,), {"stow": self})
        self._httpd = ThreadingHTTPServer((self.config.host, int(self.config.dicomweb_port)),
                                          handler)
        self._httpd.daemon_threads = True
        scheme = "http"
        if self.config.dicom_tls_cert and self.config.dicom_tls_key:
            from clients.gateway.tls import server_context

            context = server_context(self.config.dicom_tls_cert, self.config.dicom_tls_key,
                                     self.config.dicom_tls_ca)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="stow-rs",
                                        daemon=True)
        self._thread.start()
        log.info("STOW-RS on %s://%s:%d%s", scheme, self.config.host, self.port, PATH_PREFIX)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def authorized(self, address: str, authorization: str | None) -> bool:
        if self.config.accept_any_calling_ae or address in self.clients:
            return True
        if authorization and authorization.startswith("Bearer "):
            given = authorization[len("Bearer "):].strip().encode()
            return any(hmac.compare_digest(given, t.encode()) for t in self.tokens)
        return False

    def store(self, payload: bytes, study_uid: str | None) -> tuple[Dataset, int]:
        """One part: (reference item, 0 or a failure reason)."""
        ref = Dataset()
        try:
            ds = dcmread(BytesIO(payload), stop_before_pixels=True)
            ref.ReferencedSOPClassUID = str(ds.SOPClassUID)
            ref.ReferencedSOPInstanceUID = str(ds.SOPInstanceUID)
            study = str(ds.StudyInstanceUID)
        except Exception as exc:  # why: not DICOM, no UIDs (any type): refuse this part only
            log.warning("STOW-RS part refused: not a DICOM instance with UIDs (%s)",
                        type(exc).__name__)
            return ref, FAILURE_CANNOT_UNDERSTAND
        if payload[128:132] != b"DICM":
            log.warning("STOW-RS part %s refused: not a PS3.10 file",
                        uid_tag(ref.ReferencedSOPInstanceUID))
            return ref, FAILURE_CANNOT_UNDERSTAND
        if study_uid is not None and study != study_uid:
            return ref, FAILURE_STUDY_MISMATCH
        try:
            self.queue.store(study, ref.ReferencedSOPInstanceUID, payload)
        except OSError as exc:
            log.error("STOW-RS: cannot persist %s (%s)", uid_tag(ref.ReferencedSOPInstanceUID),
                      exc.strerror)
            return ref, FAILURE_OUT_OF_RESOURCES
        log.info("stored %s of study %s (STOW-RS)", uid_tag(ref.ReferencedSOPInstanceUID),
                 uid_tag(study))
        return ref, 0


class _Handler(BaseHTTPRequestHandler):
    stow: StowServer
    server_version = "msk-gateway-stow"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, status: int, body: dict | None = None,
                headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.close_connection = True
        self._answer(status, {"error": message}, headers)

    def _body(self) -> bytes | None:
        """The request body, by Content-Length or chunked (dicomweb-client streams), refused
        (413) as soon as it is known to exceed MAX_BODY_BYTES; None = answered already."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                try:
                    size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"x", 16)
                except ValueError:
                    self._error(400, "malformed chunked body")
                    return None
                if size == 0:
                    while self.rfile.readline(1024).strip():   # trailers
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    self._error(413, f"request of more than {MAX_BODY_BYTES} bytes; at most "
                                f"{MAX_BODY_BYTES}")
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(16)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "Content-Length or chunked Transfer-Encoding required")
            return None
        if length > MAX_BODY_BYTES:
            self._error(413, f"request of {length} bytes; at most {MAX_BODY_BYTES}")
            return None
        return self.rfile.read(length)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._error(405, "this gateway only accepts STOW-RS (POST /dicomweb/studies)")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != PATH_PREFIX and not path.startswith(PATH_PREFIX + "/"):
            return self._error(404, f"unknown path {path!r}; STOW-RS is POST {PATH_PREFIX}")
        study_uid = path[len(PATH_PREFIX) + 1:] or None
        if study_uid is not None and "/" in study_uid:
            return self._error(404, f"unknown path {path!r}")
        address = self.client_address[0]
        if not self.stow.authorized(address, self.headers.get("Authorization")):
            log.warning("STOW-RS from %s refused: not an allowed sender", address)
            return self._error(401, "not an allowed sender (token or client address)",
                               {"WWW-Authenticate": 'Bearer realm="msk-gateway"'})
        ctype = self.headers.get("Content-Type", "")
        if not ctype.lower().startswith("multipart/related") or \
                "application/dicom" not in ctype.lower():
            return self._error(415, f"Content-Type {ctype!r}: expected multipart/related; "
                               "type=\"application/dicom\"")
        body = self._body()
        if body is None:
            return None
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body)
        parts = [p.get_payload(decode=True) for p in message.iter_parts()] \
            if message.is_multipart() else []
        if not parts:
            return self._error(400, "no parts in the multipart/related body")
        stored, failed = [], []
        for payload in parts:
            ref, reason = self.stow.store(payload or b"", study_uid)
            if reason:
                ref.FailureReason = reason
                failed.append(ref)
            else:
                stored.append(ref)
        result = Dataset()
        if stored:
            result.ReferencedSOPSequence = stored
        if failed:
            result.FailedSOPSequence = failed
        status = 200 if not failed else (202 if stored else 409)
        self._answer(status, result.to_json_dict())
