"""The `msk web` FastAPI application: upload radiographs, see scores, heatmaps and wrist boxes.

Pages (HTML, every one carrying the research-use banner and the loaded model versions):
  GET  /            upload form, per-image results, study view (filled in by static/app.js)
  GET  /models      the model versions Triton reports
API (JSON, what the page calls; also usable from scripts):
  GET  /api/status  Triton reachability and READY model versions
  POST /api/score   multipart `files` (one or more) + optional `body_part` -> per-image results
                    and the study aggregate. The request must declare its Content-Length, which
                    is checked against `MAX_UPLOAD_REQUEST_BYTES` before the body is read (413,
                    or 411 without it); each file is held to `MAX_IMAGE_BYTES` from its size,
                    and decoded one at a time by the one reader, which refuses compressed
                    content that expands beyond the limits (a deflated DICOM bomb) before
                    inflating it.

The app holds only gRPC clients (see `clients.web.service`); it never imports torch. Any error
reaches the user as a sentence: handlers below turn every exception into JSON or an HTML page
without a traceback (the traceback goes to the server log only).
"""

from __future__ import annotations

import logging
from html import escape
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from clients.tls import GrpcTls
from clients.web.service import WebService
from clients.web.uploads import decode
from msk import RESEARCH_USE_NOTICE, __version__
from msk.constants import (
    MAX_IMAGE_BYTES,
    MAX_UPLOAD_REQUEST_BYTES,
    MURA_BODY_PARTS,
    MURA_MEMBERS,
)
from msk.imaging import RadiographError, format_bytes

log = logging.getLogger("msk.web")

HERE = Path(__file__).resolve().parent
MAX_FILES_PER_STUDY = 32
"""A MURA study has 1-11 images; the cap keeps one request from tying up the server."""


def create_app(triton_url: str, tls: GrpcTls | None = None, ood_policy: str = "flag"
               ) -> FastAPI:
    """Build the app for one Triton server (gRPC `host:port`, over TLS when `tls` is given);
    `ood_policy` (`msk.constants.OOD_POLICIES`) is `msk web --ood`."""
    service = WebService(triton_url, tls=tls, ood_policy=ood_policy)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app = FastAPI(title="msk-triton web", version=__version__, description=RESEARCH_USE_NOTICE,
                  docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service
    app.add_middleware(UploadSizeLimit, limit=MAX_UPLOAD_REQUEST_BYTES)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("status", service.status())
        return templates.TemplateResponse(
            request, name, status_code=status_code,
            context={"notice": RESEARCH_USE_NOTICE, "version": __version__,
                     "body_parts": MURA_BODY_PARTS, "members": MURA_MEMBERS, **context},
        )

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return page(request, "index.html")

    @app.get("/models", response_class=HTMLResponse)
    def models(request: Request) -> HTMLResponse:
        return page(request, "models.html")

    @app.get("/api/status")
    def api_status() -> dict[str, Any]:
        return {"notice": RESEARCH_USE_NOTICE, **service.status().to_json()}

    @app.post("/api/score")
    def api_score(files: list[UploadFile] = File(...),  # noqa: B008 - FastAPI's idiom
                  body_part: str = Form("")) -> JSONResponse:
        part = body_part.strip().lower() or None
        if part is not None and part not in MURA_BODY_PARTS:
            return _error(400, f"unknown body part {body_part!r}; expected one of "
                          f"{', '.join(MURA_BODY_PARTS)}")
        if len(files) > MAX_FILES_PER_STUDY:
            return _error(400, f"too many files ({len(files)}); at most {MAX_FILES_PER_STUDY} "
                          "per study")
        uploads: list[Any] = []
        for f in files:      # one at a time: at most one file's bytes are in memory at once
            name = Path(f.filename or "upload").name
            try:
                uploads.append(decode(f.file, name, size=f.size))
            except RadiographError as exc:
                # Kept without its traceback, whose frames hold the file's bytes: 32 refused
                # uploads must not stay in memory until the study is answered.
                uploads.append(exc.with_traceback(None))
            finally:
                f.file.close()     # its spooled copy (memory, then disk) is not needed again
        result = service.score_study(uploads, part)
        return JSONResponse({"notice": RESEARCH_USE_NOTICE, **result})

    # -- errors: readable, never a traceback -------------------------------------------------
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: "Page not found.", 405: "Method not allowed."}.get(
            exc.status_code, str(exc.detail))
        return _respond(request, exc.status_code, message, page)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "request"
                           for e in exc.errors())
        return _respond(request, 400, f"Invalid request: missing or malformed {fields}. "
                        "Choose one or more image files to upload.", page)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        log.exception("unexpected error serving %s", request.url.path)
        return _respond(request, 500, "Something went wrong on the web server; the details are "
                        "in its log. Please try again.", page)

    return app


class UploadSizeLimit:
    """ASGI middleware: refuse a request body larger than `limit` from its Content-Length, before
    a byte of it is read (Starlette would otherwise spool the whole upload first). A body without
    Content-Length (chunked) is refused with 411: browsers and HTTP clients always send it for
    uploads, and the ASGI server never delivers more bytes than it declares."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        declared = headers.get("content-length")
        if declared is None or not declared.strip().isdigit():
            if headers.get("transfer-encoding", "").lower() == "chunked" or declared is not None:
                await _error(411, "the upload must declare its size (Content-Length)")(
                    scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        size = int(declared)
        if size > self.limit:
            await _error(413, f"upload is {format_bytes(size)}; the limit is "
                         f"{format_bytes(self.limit)} per request and "
                         f"{format_bytes(MAX_IMAGE_BYTES)} per file")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"notice": RESEARCH_USE_NOTICE, "error": message},
                        status_code=status_code)


def _respond(request: Request, status_code: int, message: str, page) -> Any:
    """JSON for API calls, an HTML page (banner included) for browsers."""
    if request.url.path.startswith("/api/"):
        return _error(status_code, message)
    try:
        return page(request, "error.html", status_code=status_code, message=message)
    except Exception:  # noqa: BLE001  # why: a failing template must not leak a traceback
        log.exception("error page failed")
        return HTMLResponse(f"<p>{escape(RESEARCH_USE_NOTICE)}</p><p>{escape(message)}</p>",
                            status_code=status_code)
