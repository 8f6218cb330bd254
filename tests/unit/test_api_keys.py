"""API keys without Ray: the key file (text, YAML, JSON), scopes, limits, the refusal to
serve a non-loopback address without keys, and the HTTP answers (401/403/429, the audit
line, /readyz with and without a key) through the Gateway's FastAPI app in-process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.errors import TooManyRequests
from core.storage import make_object_store
from serve_app import deploy_configs
from serve_app.access import KeyLimits, TokenBucket
from serve_app.api_keys import (
    ApiKey,
    KeyFileError,
    configured_keys,
    digest,
    id_allowed,
    read_key_file,
)
from serve_app.exposure import AuthRequired, HttpBind, check_auth, is_loopback
from serve_app.http_app import create_http_app
from serve_app.modules import DeploymentState, ModuleBoard
from serve_app.routes.health import ReadinessCache
from serve_app.schemas import ReadinessResponse
from serve_app.services import Services
from serve_app.settings import SettingsError, load_settings

READER = "reader-key-0123456789abcdef"
WRITER = "writer-key-0123456789abcdef"
PLAIN = "plain-key"
ZEROS = "0" * 64

SCOPED_YAML = f"""
# team keys
- name: reader
  key: {READER}
  modules: [image_search, voice]
  projects: ["team-a-*", exact]
  voices: [alice, "shared-*"]
  access: read
- name: writer
  key_sha256: {hashlib.sha256(WRITER.encode()).hexdigest().upper()}
  modules: [image_search, voice]
  projects: ["team-a-*"]
  voices: ["alice*"]
  access: read-write
  requests_per_minute: 2
  max_concurrent: 1
"""


# --- the key file --------------------------------------------------------------------------


def test_a_text_file_holds_unscoped_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# comment\n\n  k-one  \nk-two\nk-one\n")
    keys = read_key_file(path)
    assert [key.name for key in keys] == ["API_KEYS_FILE#1", "API_KEYS_FILE#2"]
    assert keys[0].digest == digest("k-one") and keys[0].unscoped


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_a_structured_file_holds_scoped_keys(tmp_path: Path, suffix: str) -> None:
    entries = [
        {
            "name": "alice",
            "key": "a" * 20,
            "modules": ["voice"],
            "voices": ["alice-*"],
            "access": "read",
            "requests_per_minute": 30,
            "max_concurrent": 2,
        },
        {"name": "ops", "key_sha256": digest("b" * 20)},
    ]
    path = tmp_path / f"keys{suffix}"
    text = json.dumps({"keys": entries}) if suffix == ".json" else json.dumps(entries)
    path.write_text(text)  # JSON is YAML too
    alice, ops = read_key_file(path)
    assert alice == ApiKey(
        name="alice",
        digest=digest("a" * 20),
        modules=("voice",),
        voices=("alice-*",),
        access="read",
        requests_per_minute=30,
        max_concurrent=2,
    )
    assert not alice.can_write and alice.allows_voice("alice-2") and not alice.allows_voice("bob")
    assert not alice.allows_module("image") and alice.projects == ("*",)
    assert ops.unscoped and ops.digest == digest("b" * 20)  # defaults: everything


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("# only a comment\n\n", "holds no key"),
        ("[]", "holds no key"),
        ("{keys: 3}", "must hold a list of keys"),
        ("- name: a\n  key: [", "is not valid YAML at line"),
        ("- {name: a}", "entry 1 ('a'): entry: Value error, give exactly one of"),
        (f"- {{name: a, key: {READER}, key_sha256: '{ZEROS}'}}", "give exactly one of"),
        ("- {name: a, key: short}", "entry 1 ('a'): key: Value should have at least 16"),
        (f"- {{name: a, key: {READER}, modules: [video]}}", "modules.0: Input should be"),
        (f"- {{name: a, key: {READER}, projects: ['a*b']}}", "projects.0: String should match"),
        (f"- {{name: a, key: {READER}, access: write}}", "access: Input should be"),
        (f"- {{name: a, key: {READER}, requests_per_minute: 0}}", "requests_per_minute"),
        (f"- {{name: a, key: {READER}, colour: red}}", "colour: Extra inputs"),
        (f"- {{name: 'a b', key: {READER}}}", "entry 1 ('a b'): name: String should match"),
        (f"- {{name: a, key: {READER}}}\n- {{name: a, key: {WRITER}}}", "names must be unique"),
        (
            f"- {{name: a, key: {READER}}}\n- {{name: b, key: {READER}}}",
            "'b' and 'a' are the same key",
        ),
    ],
)
def test_a_bad_key_file_is_refused_naming_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / ("keys.txt" if text.startswith("#") else "keys.yaml")
    path.write_text(text)
    with pytest.raises(KeyFileError, match="API_KEYS_FILE=") as caught:
        read_key_file(path)
    assert message in str(caught.value)
    assert READER not in str(caught.value) and WRITER not in str(caught.value)  # never a key


def test_an_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(tmp_path / "missing.txt")
    with pytest.raises(KeyFileError, match="cannot be read"):
        read_key_file(tmp_path)  # a directory
    binary = tmp_path / "keys.txt"
    binary.write_bytes(b"\xff\xfe\x00 not utf-8")
    with pytest.raises(KeyFileError, match="cannot be read: UnicodeDecodeError"):
        read_key_file(binary)


def test_a_plain_key_given_twice_is_one_key_but_not_with_two_scopes(tmp_path: Path) -> None:
    text_file = tmp_path / "keys.txt"
    text_file.write_text(f"{PLAIN}\nother\n")
    keys = configured_keys(f"{PLAIN}, {PLAIN}", text_file)
    assert [key.name for key in keys] == ["API_KEYS#1", "API_KEYS_FILE#2"]
    scoped = tmp_path / "keys.yaml"
    scoped.write_text(f"- {{name: scoped, key: {READER}, access: read}}\n")
    with pytest.raises(KeyFileError, match="same key with different scopes"):
        configured_keys(READER, scoped)


def test_settings_read_the_keys_once_and_refuse_the_bad_ones(tmp_path: Path) -> None:
    scoped = tmp_path / "keys.yaml"
    scoped.write_text(SCOPED_YAML)
    settings = load_settings(None, {"API_KEYS": PLAIN, "API_KEYS_FILE": str(scoped)})
    assert [key.name for key in settings.api_key_scopes()] == ["API_KEYS#1", "reader", "writer"]
    config = deploy_configs.gateway_config(settings)
    assert config.api_keys == settings.api_key_scopes()
    assert PLAIN not in repr(config) and READER not in config.model_dump_json()

    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(SettingsError, match="API_KEYS_FILE=.*holds no key"):
        load_settings(None, {"API_KEYS_FILE": str(empty)})
    with pytest.raises(SettingsError, match="API_KEYS_FILE=.*does not exist"):
        load_settings(None, {"API_KEYS_FILE": str(tmp_path / "missing")})
    with pytest.raises(SettingsError, match="AUTH_DISABLED=1 turns authentication off"):
        load_settings(None, {"API_KEYS": PLAIN, "AUTH_DISABLED": True})
    with pytest.raises(SettingsError, match="API_KEYS holds no key"):
        load_settings(None, {"API_KEYS": " , ,"})
    assert load_settings(None, {"AUTH_DISABLED": True}).auth_disabled


@pytest.mark.parametrize(
    ("patterns", "value", "allowed"),
    [
        (["*"], "anything", True),
        (["team-a-*"], "team-a-1", True),
        (["team-a-*"], "team-a-", True),
        (["team-a-*"], "team-b-1", False),
        (["exact"], "exact", True),
        (["exact"], "exact2", False),
        (["exact"], "exac", False),
        ([], "anything", False),
    ],
)
def test_ids_match_exactly_or_by_prefix(patterns: list[str], value: str, allowed: bool) -> None:
    assert id_allowed(patterns, value) is allowed


# --- the bind host -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


class Captured(logging.Handler):
    """Records of the `ray.serve` logger (which need not propagate to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int = logging.DEBUG) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno >= level]


@pytest.fixture
def serve_log() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("ray.serve")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_a_non_loopback_bind_needs_keys_or_auth_disabled(serve_log: Captured) -> None:
    exposed = HttpBind("0.0.0.0", 8000)
    with pytest.raises(AuthRequired, match=r"0\.0\.0\.0:8000 \(http_options.host\).*API_KEYS"):
        check_auth(exposed, has_keys=False, auth_disabled=False, where="test")
    check_auth(exposed, has_keys=True, auth_disabled=False, where="test")
    assert serve_log.lines(logging.WARNING) == []
    check_auth(exposed, has_keys=False, auth_disabled=True, where="test")
    (warning,) = serve_log.lines(logging.WARNING)
    assert "AUTH_DISABLED=1" in warning and "0.0.0.0:8000" in warning
    check_auth(HttpBind("127.0.0.1", 8000), has_keys=False, auth_disabled=False, where="test")
    assert "no API keys" in serve_log.lines(logging.WARNING)[-1]
    check_auth(HttpBind(None), has_keys=False, auth_disabled=False, where="test")  # no HTTP


def test_the_builder_refuses_before_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app import app as builder

    monkeypatch.setattr(builder, "serve_http_bind", lambda: HttpBind("0.0.0.0", 8000))
    settings = load_settings(
        None, {"IMAGE_ENABLED": False, "IMAGE_SEARCH_ENABLED": False, "VOICE_ENABLED": False}
    )
    with pytest.raises(AuthRequired, match="refusing to start without API keys"):
        builder.build_graph(settings)

    def no_serve() -> HttpBind:
        raise LookupError("no Serve controller is running")

    monkeypatch.setattr(builder, "serve_http_bind", no_serve)
    builder.check_exposure(settings)  # cannot ask: the Gateway checks at its start


def test_the_gateway_refuses_too_and_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app import gateway

    settings = load_settings(None, {})
    config = deploy_configs.gateway_config(settings)
    monkeypatch.setattr(gateway, "serve_http_bind", lambda: HttpBind("::", 8000))
    with pytest.raises(AuthRequired, match=r":::8000"):
        gateway.require_auth_where_exposed(config)
    gateway.require_auth_where_exposed(config.model_copy(update={"auth_disabled": True}))

    def broken() -> HttpBind:
        raise RuntimeError("controller unreachable")

    monkeypatch.setattr(gateway, "serve_http_bind", broken)
    with pytest.raises(AuthRequired, match="cannot tell which address"):
        gateway.require_auth_where_exposed(config)
    keyed = config.model_copy(update={"api_keys": (ApiKey(name="k", digest=digest(PLAIN)),)})
    gateway.require_auth_where_exposed(keyed)


# --- limits --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket_refills_per_second() -> None:
    clock = Clock()
    bucket = TokenBucket(6, clock)  # one every 10 s, six at once
    assert [bucket.take() for _ in range(6)] == [0.0] * 6
    assert bucket.take() == pytest.approx(10.0)
    clock.now += 4
    assert bucket.take() == pytest.approx(6.0)
    clock.now += 6
    assert bucket.take() == 0.0


def test_key_limits_answer_429_with_retry_after() -> None:
    clock = Clock()
    key = ApiKey(name="k", digest=digest(PLAIN), requests_per_minute=2, max_concurrent=1)
    limits = KeyLimits([key], clock)
    limits.admit_request(key)
    limits.admit_request(key)
    with pytest.raises(TooManyRequests) as caught:
        limits.admit_request(key)
    assert caught.value.status_code == 429 and caught.value.headers == {"Retry-After": "30"}
    assert caught.value.details["limit"] == "requests_per_minute"
    with limits.model_work(key):
        with pytest.raises(TooManyRequests) as busy, limits.model_work(key):
            pass
        assert busy.value.headers == {"Retry-After": "1"}
        assert busy.value.details["limit"] == "max_concurrent"
    assert limits.working(key) == 0
    unlimited = ApiKey(name="u", digest=digest("u"))
    for _ in range(100):
        limits.admit_request(unlimited)


# --- HTTP ----------------------------------------------------------------------------------


class StaticBoard(ModuleBoard):
    """Every enabled module ready, without asking Serve."""

    def _read_serve_status(self) -> dict[str, DeploymentState]:
        return {
            name: DeploymentState("HEALTHY", "")
            for name in (
                "PromptOptimizer",
                "ImageGenerator",
                "ClipEmbedder",
                "VectorIndex",
                "VoiceCloner",
            )
        }


def make_client(tmp_path: Path, **settings: Any) -> TestClient:
    values = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "VOICE_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(tmp_path / "storage"),
        **settings,
    }
    config = deploy_configs.gateway_config(load_settings(None, values))
    services = Services(
        config=config,
        store=make_object_store(config.storage),
        board=StaticBoard("unit", config.enabled),
    )
    return TestClient(create_http_app(services))


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    key_file = tmp_path / "keys.yaml"
    key_file.write_text(SCOPED_YAML)
    return make_client(tmp_path, API_KEYS=PLAIN, API_KEYS_FILE=str(key_file))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


def test_401_without_a_known_key(client: TestClient) -> None:
    for headers in ({}, bearer("nope"), {"Authorization": f"Basic {PLAIN}"}):
        error = assert_error(client.get("/v1/voices/alice", headers=headers), 401, "unauthorized")
        assert PLAIN not in error["message"]
    assert client.get("/healthz").status_code == 200


def test_403_names_the_scope(client: TestClient) -> None:
    cases = [
        ("GET", "/v1/projects/team-b/images", "project", "project 'team-b'"),
        ("GET", "/v1/voices/bob", "voice", "voice 'bob'"),
        ("POST", "/v1/images/generate", "module", "the image module"),
        ("DELETE", "/v1/voices/alice", "access", "is read-only"),
        ("PUT", "/v1/voices/alice", "access", "is read-only"),
        ("POST", "/v1/projects/team-a-1/images", "access", "is read-only"),
        ("DELETE", "/v1/projects/exact/images/abc", "access", "is read-only"),
        ("GET", "/v1/storage/AI/SEARCH/team-b/x.png", "project", "project 'team-b'"),
        ("GET", "/v1/storage/AI/VOICE/generated/bob/x.mp3", "voice", "voice 'bob'"),
        ("GET", "/v1/storage/AI/POSTER/x.png", "module", "the image module"),
    ]
    for method, path, scope, says in cases:
        response = client.request(method, path, headers=bearer(READER), json={"title": "t"})
        error = assert_error(response, 403, "forbidden")
        assert error["scope"] == scope and error["key_name"] == "reader", (path, error)
        assert says in error["message"] and "API key 'reader'" in error["message"]
    speech = client.post(
        "/v1/audio/speech",
        headers=bearer(READER),
        json={"model": "tts-1", "input": "hi", "voice": "bob"},
    )
    assert assert_error(speech, 403, "forbidden")["scope"] == "voice"
    stored = client.post(
        "/v1/r2/voice/generate", headers=bearer(READER), json={"user_id": "bob", "text": "hi"}
    )
    assert assert_error(stored, 403, "forbidden")["scope"] == "voice"


def test_inside_the_scope_the_route_answers(client: TestClient) -> None:
    # Past the scope: the module is off (503), the voice missing (404), the body wrong (422).
    for key, method, path in [
        (READER, "GET", "/v1/projects/team-a-1/images"),
        (READER, "GET", "/v1/projects/exact/images"),
        (READER, "POST", "/v1/projects/team-a-1/images/search"),
        (READER, "GET", "/v1/voices/shared-x"),
        (WRITER, "DELETE", "/v1/voices/alice-2"),
        (PLAIN, "POST", "/v1/images/generate"),
        (PLAIN, "DELETE", "/v1/voices/anyone"),
    ]:
        response = client.request(method, path, headers=bearer(key), json={"query": "q"})
        assert response.status_code in (404, 422, 503), (key, path, response.text)
    assert_error(
        client.get("/v1/storage/AI/SEARCH/team-a-1/x.png", headers=bearer(READER)),
        404,
        "object_not_found",
    )


def test_429_with_retry_after_per_key(client: TestClient) -> None:
    for _ in range(2):
        assert client.get("/v1/voices/alice", headers=bearer(WRITER)).status_code == 404
    response = client.get("/v1/voices/alice", headers=bearer(WRITER))
    error = assert_error(response, 429, "rate_limited")
    assert error["limit"] == "requests_per_minute" and error["key_name"] == "writer"
    assert 1 <= int(response.headers["retry-after"]) <= 30
    # another key is not affected; the probes are not counted
    assert client.get("/v1/voices/alice", headers=bearer(READER)).status_code == 404
    assert client.get("/readyz", headers=bearer(WRITER)).status_code == 200


def test_429_past_the_concurrent_model_work(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    key_file.write_text(json.dumps([{"name": "one", "key": WRITER, "max_concurrent": 1}]))
    client = make_client(tmp_path, API_KEYS_FILE=str(key_file))
    limits: KeyLimits = client.app.state.key_limits
    (key,) = client.app.state.services.config.api_keys
    with limits.model_work(key):  # one model request of the key running
        busy = client.post("/v1/images/generate", headers=bearer(WRITER), json={"title": "t"})
        error = assert_error(busy, 429, "rate_limited")
        assert error["limit"] == "max_concurrent" and busy.headers["retry-after"] == "1"
        # not model work: still answered
        assert client.get("/v1/voices/alice", headers=bearer(WRITER)).status_code == 404
    free = client.post("/v1/images/generate", headers=bearer(WRITER), json={"title": "t"})
    assert_error(free, 503, "module_disabled")
    assert limits.working(key) == 0


def test_one_audit_line_per_mutating_request(client: TestClient, serve_log: Captured) -> None:
    client.delete("/v1/voices/alice-1", headers={**bearer(WRITER), "X-Request-ID": "rid-1"})
    client.delete("/v1/voices/alice", headers=bearer(READER))
    client.post("/v1/images/generate", json={"title": "t"})
    client.get("/v1/voices/alice", headers=bearer(READER))  # a read: no line
    lines = [line for line in serve_log.lines() if line.startswith("audit ")]
    assert lines == [
        "audit key=writer method=DELETE route=/v1/voices/{voice_id} status=404 request_id=-",
        "audit key=reader method=DELETE route=/v1/voices/{voice_id} status=403 request_id=-",
        "audit key=- method=POST route=- path='/v1/images/generate' status=401 request_id=-",
    ]
    assert not any(key in line for line in lines for key in (READER, WRITER, PLAIN))


def test_readyz_says_more_to_a_key(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/readyz").json() == {"ready": True}
    assert client.get("/readyz", headers=bearer("wrong")).json() == {"ready": True}
    detailed = client.get("/readyz", headers=bearer(READER)).json()
    assert set(detailed) == {"ready", "modules", "storage", "placement"}
    # a server without keys (loopback) shows the detail to all
    open_client = make_client(tmp_path)
    assert "modules" in open_client.get("/readyz").json()


def test_readiness_is_computed_once_per_ttl_and_shared() -> None:
    calls = 0

    async def compute() -> ReadinessResponse:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return ReadinessResponse(
            ready=True, modules={}, storage={"state": "ready", "enabled_by": "R2_ENABLED"}
        )

    async def scenario() -> None:
        cache = ReadinessCache(ttl_s=60)
        answers = await asyncio.gather(*(cache.get(compute) for _ in range(5)))
        assert calls == 1 and all(answer is answers[0] for answer in answers)
        await cache.get(compute)
        assert calls == 1
        cache.ttl_s = 0
        await asyncio.sleep(0.01)
        await cache.get(compute)
        assert calls == 2

    asyncio.run(scenario())


def test_readyz_does_not_take_the_routes_lock(tmp_path: Path) -> None:
    client = make_client(tmp_path, API_KEYS=PLAIN)
    board: ModuleBoard = client.app.state.services.board

    async def held() -> None:
        async with board._lock:  # a route reading Serve's status, forever
            response = await asyncio.wait_for(asyncio.to_thread(client.get, "/readyz"), 30)
            assert response.json() == {"ready": True}

    asyncio.run(held())
