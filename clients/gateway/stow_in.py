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

Memory: a request body is never held whole. It is copied to an unlinked file in the queue's
tmp/ folder a step at a time as it arrives (refused with 413 as soon as it is known to pass
`MAX_BODY_BYTES`), its parts are found by scanning that file for the boundary, and one part at a
time is read back, held to the reader's file limit and parsed by the reader's capped parser
(`msk.imaging.read_dicom`): a deflated instance that expands beyond the limit is refused
(0xA700) instead of being inflated. Answers sent before the body was read (401, 413, 415, 400)
are followed by a short lingering read, so the sender sees the answer rather than a reset, and a
sender that goes away is one log line, not a traceback.
"""

from __future__ import annotations

import email.message
import hmac
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, NamedTuple

from pydicom import Dataset

from clients.gateway.config import GatewayConfig
from clients.gateway.phi import uid_tag
from clients.gateway.queue import StudyQueue
from msk.constants import MAX_IMAGE_BYTES, MAX_UPLOAD_REQUEST_BYTES
from msk.imaging import RadiographError, format_bytes, read_dicom

log = logging.getLogger("msk.gateway.stow")

TOKENS_ENV = "MSK_GATEWAY_STOW_TOKENS"
PATH_PREFIX = "/dicomweb/studies"
MAX_BODY_BYTES = MAX_UPLOAD_REQUEST_BYTES
"""Largest STOW-RS request accepted (from Content-Length before reading, or as a chunked body
arrives): the same request limit as the web app's uploads; each instance is then held to the
reader's file limit, `MAX_IMAGE_BYTES`."""
MAX_PARTS = 10_000
"""Instances in one request: each costs a reference in memory and in the answer."""
STEP_BYTES = 1 << 20
"""Bytes read from the socket, written to the spool, or scanned, per step."""
LINGER_S = 2.0
"""How long an early answer waits for the rest of the body (read and dropped) before closing."""
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
        """One part: (reference item, 0 or a failure reason). The header is parsed by the
        reader's capped parser: a deflated instance is never inflated beyond the file limit."""
        ref = Dataset()
        try:
            ds = read_dicom(payload, "STOW-RS part", stop_before_pixels=True)
            ref.ReferencedSOPClassUID = str(ds.SOPClassUID)
            ref.ReferencedSOPInstanceUID = str(ds.SOPInstanceUID)
            study = str(ds.StudyInstanceUID)
        except RadiographError as exc:
            if exc.reason == "file_too_large":
                log.warning("STOW-RS part refused: %s", exc.detail)
                return ref, FAILURE_OUT_OF_RESOURCES
            log.warning("STOW-RS part refused: not a DICOM instance (%s)", exc.reason)
            return ref, FAILURE_CANNOT_UNDERSTAND
        except Exception as exc:  # why: no UIDs (any type): refuse this part only
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


class _Part(NamedTuple):
    """One part of a spooled multipart body: where its payload is, or what is wrong with it."""

    offset: int
    size: int
    problem: str | None = None


class TooManyParts(ValueError):
    """More than `MAX_PARTS` parts in one request."""


def boundary_of(content_type: str) -> bytes | None:
    """The `boundary` parameter of a Content-Type (quoted or not), as bytes; None without one."""
    message = email.message.Message()
    message["Content-Type"] = content_type
    boundary = message.get_boundary()
    if not boundary:
        return None
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        return None


def multipart_parts(fd: int, size: int, boundary: bytes) -> list[_Part]:
    """The parts of the multipart body in the file `fd` (RFC 2046 5.1.1), found by scanning it a
    step at a time: a preamble, LF line ends and transport padding are accepted as the email
    parser accepted them; a part after which the closing delimiter never came is marked
    truncated. Raises `TooManyParts` past `MAX_PARTS`."""
    parts: list[_Part] = []
    start: int | None = None                  # the current part's first byte (its headers)
    for at in _delimiter_lines(fd, size, boundary):
        after = at + 3 + len(boundary)        # past "\n--boundary"
        line = os.pread(fd, 256, after)
        close = line.startswith(b"--")
        rest = line[2:] if close else line
        padding = len(rest) - len(rest.lstrip(b" \t"))
        eol = rest[padding:padding + 2]
        ending = 2 if eol == b"\r\n" else 1 if eol[:1] == b"\n" else 0
        if not ending and not (close and after + len(line) >= size):
            continue                          # "--boundaryX...": a line of data, not a delimiter
        if start is not None:
            end = at - 1 if at > start and os.pread(fd, 1, at - 1) == b"\r" else at
            parts.append(_part(fd, start, end))
            if len(parts) > MAX_PARTS:
                raise TooManyParts(f"more than {MAX_PARTS} parts in one request")
        if close:
            return parts
        start = after + padding + ending
    if start is not None:
        parts.append(_Part(start, size - start, "truncated: the body ends before its closing "
                                                "boundary"))
    return parts


def _delimiter_lines(fd: int, size: int, boundary: bytes) -> Iterator[int]:
    """Offsets of the line break before each "--boundary" (-1 for one at the very start)."""
    needle = b"\n--" + boundary
    keep = len(needle) - 1          # a match needs one new byte: none is found twice
    carry, base, offset = b"\n", -1, 0
    while offset < size:
        step = os.pread(fd, min(STEP_BYTES, size - offset), offset)
        if not step:
            return
        window = carry + step
        hit = window.find(needle)
        while hit >= 0:
            yield base + hit
            hit = window.find(needle, hit + 1)
        carry = window[-keep:]
        base += len(window) - len(carry)
        offset += len(step)


def _part(fd: int, start: int, end: int) -> _Part:
    """A part's payload follows its headers and the blank line after them."""
    if end <= start:
        return _Part(start, 0, "an empty part")
    head = os.pread(fd, min(64 * 1024, end - start), start)
    for blank in (b"\r\n", b"\n"):
        if head.startswith(blank):            # no headers at all
            return _Part(start + len(blank), end - start - len(blank))
    found = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := head.find(sep)) >= 0]
    if not found:
        return _Part(start, 0, "no blank line after its headers")
    index, length = min(found)
    body = start + index + length
    return _Part(body, end - body)


class _Handler(BaseHTTPRequestHandler):
    stow: StowServer
    server_version = "msk-gateway-stow"
    protocol_version = "HTTP/1.1"
    _unread: int | None = 0
    """Body bytes the sender has still to send: None = unknown (chunked), 0 = none."""

    def setup(self) -> None:
        # A sender that stops mid-request is dropped after the DICOM timeout, not waited for.
        self.timeout = self.stow.config.dicom_timeout_s
        super().setup()

    def handle(self) -> None:
        """A sender that resets or closes the connection is one line in the log (it used to be
        a BrokenPipeError/ConnectionResetError traceback from socketserver)."""
        try:
            super().handle()
        except (ConnectionError, TimeoutError) as exc:
            log.info("STOW-RS from %s: connection closed by the sender (%s)",
                     self.client_address[0], type(exc).__name__)

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
        self._answer(status, {"error": message}, {**(headers or {}), "Connection": "close"})
        if self._unread != 0:
            self._linger()

    def _linger(self) -> None:
        """After answering before the body was read: stop sending, then read and drop what the
        sender still sends, for at most `LINGER_S` and `MAX_BODY_BYTES`, so that it reads the
        answer instead of a connection reset (closing with unread data resets)."""
        budget = MAX_BODY_BYTES if self._unread is None else min(self._unread, MAX_BODY_BYTES)
        deadline = time.monotonic() + LINGER_S
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while budget > 0 and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                dropped = self.rfile.read1(min(STEP_BYTES, budget))
                if not dropped:
                    break
                budget -= len(dropped)
        except OSError:       # timed out, reset: the connection is closed either way
            pass

    def _receive(self, sink: Callable[[bytes], object]) -> bool:
        """Copy the request body, by Content-Length or chunked (dicomweb-client streams), into
        `sink` a step at a time; refused (413) as soon as it is known to exceed MAX_BODY_BYTES.
        False = answered already."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._receive_chunked(sink)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._unread = None
            self._error(411, "Content-Length or chunked Transfer-Encoding required")
            return False
        self._unread = length
        if length > MAX_BODY_BYTES:
            self._error(413, f"request of {length} bytes; at most {MAX_BODY_BYTES}")
            return False
        self._copy(length, sink)
        return True

    def _receive_chunked(self, sink: Callable[[bytes], object]) -> bool:
        self._unread, total = None, 0
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"x", 16)
            except ValueError:
                self._error(400, "malformed chunked body")
                return False
            if size == 0:
                while self.rfile.readline(1024).strip():   # trailers
                    pass
                self._unread = 0
                return True
            total += size
            if total > MAX_BODY_BYTES:
                self._error(413, f"request of more than {MAX_BODY_BYTES} bytes; at most "
                            f"{MAX_BODY_BYTES}")
                return False
            self._copy(size, sink)
            self._unread = None
            self.rfile.readline(16)

    def _copy(self, size: int, sink: Callable[[bytes], object]) -> None:
        while size > 0:
            data = self.rfile.read(min(size, STEP_BYTES))
            if not data:
                raise ConnectionResetError("the body ended early")
            sink(data)
            size -= len(data)
            self._unread = size

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._unread = _declared(self.headers)
        self._error(405, "this gateway only accepts STOW-RS (POST /dicomweb/studies)")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self._unread = _declared(self.headers)
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
        boundary = boundary_of(ctype)
        if boundary is None:
            return self._error(400, f"no boundary in Content-Type {ctype!r}: expected "
                               "multipart/related; type=\"application/dicom\"; boundary=...")
        with tempfile.TemporaryFile(dir=self.stow.queue.tmp, prefix=".stow-") as spool:
            if not self._receive(spool.write):
                return None
            spool.flush()
            try:
                parts = multipart_parts(spool.fileno(), spool.tell(), boundary)
            except TooManyParts as exc:
                return self._error(413, str(exc))
            if not parts:
                return self._error(400, "no parts in the multipart/related body (no line "
                                   f"'--{boundary.decode()}')")
            self._store_all(spool, parts, study_uid)
        return None

    def _store_all(self, spool: IO[bytes], parts: list[_Part], study_uid: str | None) -> None:
        """Store the parts one at a time (one instance in memory) and answer for all of them."""
        stored, failed = [], []
        for part in parts:
            ref, reason = self._store_part(spool, part, study_uid)
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

    def _store_part(self, spool: IO[bytes], part: _Part, study_uid: str | None,
                    ) -> tuple[Dataset, int]:
        if part.problem:
            log.warning("STOW-RS part refused: %s", part.problem)
            return Dataset(), FAILURE_CANNOT_UNDERSTAND
        if part.size > MAX_IMAGE_BYTES:
            log.warning("STOW-RS part refused: %s; the limit per instance is %s",
                        format_bytes(part.size), format_bytes(MAX_IMAGE_BYTES))
            return Dataset(), FAILURE_OUT_OF_RESOURCES
        return self.stow.store(os.pread(spool.fileno(), part.size, part.offset), study_uid)


def _declared(headers) -> int | None:
    """Body bytes a request announces: its Content-Length, None when chunked (unknown)."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return None
    try:
        return max(int(headers.get("Content-Length", "0")), 0)
    except ValueError:
        return None
