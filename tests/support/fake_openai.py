"""A real, scriptable OpenAI-compatible HTTP server for tests (stdlib only, background thread).

It speaks enough of the OpenAI REST API for the official `openai` client to talk to it:
`POST /v1/chat/completions` (non-streaming) and `GET /v1/models`. Each test scripts how the
next answers behave and afterwards inspects what the server received:

    with FakeOpenAIServer() as server:
        server.mode = "http_500"            # or "ok", "http_429", "slow", "empty", "garbage", ...
        client = openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url)
        ...
        assert server.call_count == 3
        assert server.requests[0].authorization == "Bearer sk-test"

Modes (`server.mode`, or one per call from `server.sequence`, consumed first):
  ok          200 chat.completion whose message content is `reply_text`
  http_<code> that HTTP status with an OpenAI-style error body (http_400, http_429, http_500, ...)
  slow        like ok, after `delay_s` seconds (30 s when delay_s is 0: "never" for a test)
  empty       200 chat.completion with empty content
  garbage     200 with `Content-Type: application/json` and a body that is not JSON
  drop        closes the connection without answering
`delay_s` also delays every other mode. Waits end early on `reset()` and `stop()`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_REPLY = (
    "A brooding prince in black stands in a moonlit Danish castle hall, holding a skull, "
    "cinematic lighting, dark oil painting style, dramatic composition"
)
SLOW_DEFAULT_DELAY_S = 30.0
MODES = ("ok", "slow", "empty", "garbage", "drop")  # plus "http_<status>"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    raw_body: bytes = b""
    received_at: float = field(default_factory=time.monotonic)

    @property
    def authorization(self) -> str | None:
        """The Authorization header, e.g. "Bearer sk-...", or None."""
        return self.headers.get("authorization")


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 whose answers each test scripts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._requests: list[RecordedRequest] = []
        self.reset()

    # --- scripting ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to defaults: mode ok, default reply, no delay, no records; end pending waits."""
        with self._lock:
            self.mode: str = "ok"
            self.sequence: list[str] = []
            self.reply_text: str = DEFAULT_REPLY
            self.delay_s: float = 0.0
            self.retry_after_ms: int | None = 10  # sent with errors so client retries are quick
            self.expected_api_key: str | None = None  # when set, other keys get HTTP 401
            self.models: list[str] = ["gpt-4.1"]
            self._requests = []
            self._wake.set()  # release handlers still sleeping for an earlier test
            self._wake = threading.Event()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since the last reset, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The `POST /v1/chat/completions` requests since the last reset."""
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    @property
    def call_count(self) -> int:
        """How many chat completion calls arrived since the last reset (retries included)."""
        return len(self.chat_requests)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Root URL, e.g. http://127.0.0.1:54321 (the API lives under /v1)."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What to pass as the openai client's base_url."""
        return f"{self.url}/v1"

    def start(self) -> FakeOpenAIServer:
        """Bind a free port and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = _Server((self._host, self._port), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="fake-openai",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._httpd is None:
            return
        self._wake.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- used by the handler -----------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> tuple[str, float, threading.Event]:
        """Store a chat request and decide its mode, delay and wake event atomically."""
        with self._lock:
            self._requests.append(request)
            mode = self.sequence.pop(0) if self.sequence else self.mode
            delay = self.delay_s
            if mode == "slow" and delay <= 0:
                delay = SLOW_DEFAULT_DELAY_S
            return mode, delay, self._wake

    def _note(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (timeouts) are expected here; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""

    # --- routing -----------------------------------------------------------------------------

    def do_POST(self) -> None:
        request = self._read_request()
        fake = self.server.fake
        if request.path != "/v1/chat/completions":
            fake._note(request)
            self._send_error(404, "not_found_error", f"Unknown path {request.path}")
            return
        mode, delay, wake = fake._record(request)
        if delay > 0 and wake.wait(delay):
            self.close_connection = True  # released by reset/stop: just hang up
            return
        if fake.expected_api_key is not None and (
            request.authorization != f"Bearer {fake.expected_api_key}"
        ):
            self._send_error(401, "invalid_request_error", "Incorrect API key provided.")
            return
        if not isinstance(request.body, dict) or not request.body.get("messages"):
            self._send_error(400, "invalid_request_error", "'messages' is a required property")
            return
        self._answer(mode, request.body)

    def do_GET(self) -> None:
        request = self._read_request()
        fake = self.server.fake
        fake._note(request)
        if request.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in fake.models
            ]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_error(404, "not_found_error", f"Unknown path {request.path}")

    # --- answers -----------------------------------------------------------------------------

    def _answer(self, mode: str, body: dict[str, Any]) -> None:
        fake = self.server.fake
        if mode in ("ok", "slow"):
            self._send_json(200, _completion(str(body.get("model", "")), fake.reply_text))
        elif mode == "empty":
            self._send_json(200, _completion(str(body.get("model", "")), ""))
        elif mode == "garbage":
            self._send_raw(200, b"<html>definitely not json", "application/json")
        elif mode == "drop":
            self.close_connection = True
        elif mode.startswith("http_") and mode[5:].isdigit():
            status = int(mode[5:])
            kind = {400: "invalid_request_error", 429: "rate_limit_exceeded"}.get(
                status, "server_error"
            )
            self._send_error(status, kind, f"Scripted HTTP {status} from the fake OpenAI server")
        else:
            self._send_error(500, "server_error", f"fake server: unknown mode {mode!r}")

    def _send_error(self, status: int, kind: str, message: str) -> None:
        headers = {}
        retry_after_ms = self.server.fake.retry_after_ms
        if retry_after_ms is not None and (status in (408, 409, 429) or status >= 500):
            headers["retry-after-ms"] = str(retry_after_ms)
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        self._send_json(status, body, headers)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send_raw(status, data, "application/json", headers)

    def _send_raw(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_fake_{time.monotonic_ns()}")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_request(self) -> RecordedRequest:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        path = self.path.split("?", 1)[0]
        return RecordedRequest(
            method=self.command, path=path, headers=headers, body=body, raw_body=raw
        )


def _completion(model: str, text: str) -> dict[str, Any]:
    """A chat.completion object as the OpenAI API returns it."""
    prompt_tokens, completion_tokens = 42, len(text.split())
    return {
        "id": f"chatcmpl-fake{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
