"""One HTTP listener of `msk serve`'s front door, served from a thread of its own.

Why a base: the HTTP guard and the metrics door each bind a user's port at construction (so a port
in use fails before anything starts) and serve it until `stop`; only their request handlers
differ.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HttpDoor:
    """Binds `host:port` (0 = a free port) with `handler`; `start` serves it, `stop` closes it."""

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler],
                 name: str) -> None:
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._name = name
        self._thread: threading.Thread | None = None

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, name=self._name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(30)
        self._server.server_close()
