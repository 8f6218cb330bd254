"""A loopback HTTP server that answers every request with one error, the way S3 does.

For the errors moto's S3 server does not make on request (500 InternalError, 503 SlowDown,
403 AccessDenied): clients talk to it over real HTTP, so their retries, parsing and error
translation all run. It counts the requests it got, by method.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class FailingS3Server:
    """Answers `status` with an S3 XML error body carrying `code` (no body for HEAD)."""

    def __init__(self, status: int, code: str) -> None:
        self.status = status
        self.code = code
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with server._lock:
                    server.requests[self.command] += 1
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{server.code}</Code><Message>injected by the test</Message>"
                    "<RequestId>failing-http</RequestId></Error>"
                ).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/xml")
                length = 0 if self.command == "HEAD" else len(body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        return Handler

    def __enter__(self) -> FailingS3Server:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
