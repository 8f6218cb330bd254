"""Drill: abuse. A few requests of each class of abusive request, each refused fast and at no
model time, then an abandoned long synthesis that the next request does not wait behind.

Classes (a handful of requests each; every request carries an `X-Request-ID`, which Serve
puts on the model replicas' `CALL` log lines, so the model time each class cost is read
from those logs):

1. Over-budget work: the motivating voice request (a 10 s reference, `ref_text=a`, `text` =
   "a。" x 40), one over VOICE_MAX_OUTPUT_SECONDS and one over VOICE_MAX_MODEL_STEPS
   (the shared voice app); `/v1/images/generations` with `n` x `size` x `steps` over
   IMAGE_MAX_PIXEL_STEPS (at its default, 100 Mi); `/v1/embeddings` over
   EMBEDDINGS_MAX_TOTAL_CHARS (the search app). All 422; an ordinary voice request right
   after takes about what it takes alone.
2. Oversized bodies: JSON over GATEWAY_MAX_JSON_BYTES declared and streamed chunked, a
   multipart body declared over GATEWAY_MAX_UPLOAD_BYTES (a real one, and one declaring
   1 GiB of which a few kB are sent), a reference upload over VOICE_MAX_REF_BYTES. All 413.
3. Hostile ids and paths: `../` (encoded, and literal on the wire) in project ids, voice ids
   and storage keys. 404 or 422, nothing stored.
4. Keys: none, a wrong one, keys outside their module/project/voice/access scope, a key past
   its requests per minute. 401, 403, 429.
5. An abandoned long synthesis (the client gives up after a few seconds): the model stops
   (its replica logs how long the call ran on) and the next ordinary request is served in
   about its own time, measured alone in the same test.

Then every app's /healthz and /readyz answer 200 and one ordinary request per module is
served. Bounds are generous (a refusal within DRILL_ABUSE_REFUSAL_BOUND_S, 15 s by default,
on a loaded two-core machine; they take well under a second); what shows that no model
work was done is the replica logs, not the clock.
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from ray import serve

from core.voice_cost import plan_chunks
from serve_app.app import build_app
from tests.integration.conftest import (
    CLIP_ID,
    SearchApp,
    VoiceApp,
    offline_settings,
    wait_until_ready,
)
from tests.integration.test_api_keys import (
    KEY_FILE,
    LIMITED,
    OPS,
    READER,
    SINGLE,
    WRITER,
    bearer,
)
from tests.integration.test_voice_budget import ONE_CHUNK, SENTENCE, bound
from tests.integration.test_voice_routes import reference_audio
from tests.support.drills import (
    DrillReport,
    Timer,
    drill_report,  # noqa: F401 - fixture
    error_of,
    replica_log_files,
    summary,
)

APP = "abuse"
REFUSAL_BOUND_S = float(os.environ.get("DRILL_ABUSE_REFUSAL_BOUND_S", "15"))
JSON_CAP = 64 * 1024  # GATEWAY_MAX_JSON_BYTES of the drill's keyed app
UPLOAD_CAP = 1024 * 1024  # GATEWAY_MAX_UPLOAD_BYTES of the drill's keyed app
VOICE_REF_CAP = 2 * 1024 * 1024  # VOICE_MAX_REF_BYTES of the shared voice app
LONG = SENTENCE * 15  # 495 characters (the voice app allows 500): 8 chunks
LONG_NFE = 32  # the ordinary requests use the voice app's default, 4
OVER_STEPS_NFE = 128  # the most a request may ask for
CLIENT_GIVES_UP_S = 4.0
LOG_WAIT_S = 60
ORDINARY_IMAGE = {"prompt": "a red fox", "n": 1, "size": "64x64", "steps": 2, "seed": 1}
CALL_LINE = re.compile(r" (\S+) -- CALL (\S+) (\S+) ([\d.]+)ms")
STOP_LINE = re.compile(
    r"(stopped|finished) ([\d.]+) s after its caller went away \(request (\S+)\)"
)


@dataclass(frozen=True)
class KeyedApp:
    url: str
    storage_dir: Path


@pytest.fixture(scope="module")
def keyed_app(
    serve_url: str, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KeyedApp]:
    """The image module (tiny model) with test_api_keys' scoped key file, IMAGE_MAX_PIXELS at
    1 Mi (so n x size x steps can pass the default IMAGE_MAX_PIXEL_STEPS) and small body caps,
    under /abuse."""
    folder = tmp_path_factory.mktemp("abuse")
    key_file = folder / "keys.yaml"
    key_file.write_text(KEY_FILE)
    storage = folder / "storage"
    settings = offline_settings(
        tiny_models_dir,
        storage,
        IMAGE_NUM_CPUS=0.25,  # beside the session's other apps on four logical CPUs
        IMAGE_MAX_PIXELS=1024 * 1024,
        API_KEYS_FILE=str(key_file),
        GATEWAY_MAX_JSON_BYTES=JSON_CAP,
        GATEWAY_MAX_UPLOAD_BYTES=UPLOAD_CAP,
    )
    serve.run(build_app({"env_files": [], "settings": settings}), name=APP, route_prefix=f"/{APP}")
    try:
        wait_until_ready(f"{serve_url}/{APP}")
        yield KeyedApp(url=f"{serve_url}/{APP}", storage_dir=storage)
    finally:
        serve.delete(APP)


# --- recording ----------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request of the drill and what came back."""

    kind: str  # the class ("over budget", ...) or "ordinary"
    name: str
    request_id: str
    expected: tuple[int | str, ...]  # statuses, or an exception's type name
    status: int | str  # the HTTP status, or the exception's type name
    seconds: float
    body: bytes = b""

    @property
    def as_expected(self) -> bool:
        return self.status in self.expected

    @property
    def code(self) -> str | None:
        try:
            return httpx.Response(200, content=self.body).json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class Drill:
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    sent: list[Sent] = field(default_factory=list)

    def request_id(self, kind: str) -> str:
        return f"abuse-{self.run}-{kind.replace(' ', '-')}-{len(self.sent)}"

    def send(
        self,
        kind: str,
        name: str,
        expected: tuple[int | str, ...],
        method: str,
        url: str,
        *,
        timeout: float = 60,
        headers: dict[str, str] | None = None,
        **kwargs: object,
    ) -> httpx.Response | None:
        rid = self.request_id(kind)
        timer = Timer()
        try:
            response = httpx.request(
                method,
                url,
                headers={**(headers or {}), "X-Request-ID": rid},
                timeout=timeout,
                **kwargs,  # type: ignore[arg-type]
            )
        except httpx.HTTPError as exc:
            self.sent.append(Sent(kind, name, rid, expected, type(exc).__name__, timer()))
            return None
        self.sent.append(
            Sent(kind, name, rid, expected, response.status_code, timer(), response.content)
        )
        return response

    def raw(
        self, kind: str, name: str, expected: tuple[int, ...], url: str, head: str, body: bytes
    ) -> None:
        """A hand-written request (what httpx would normalise or refuse to send)."""
        rid = self.request_id(kind)
        timer = Timer()
        status, answer = raw_exchange(url, head.replace("{rid}", rid), body)
        self.sent.append(Sent(kind, name, rid, expected, status, timer(), answer))

    def of(self, kind: str) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind]


def raw_exchange(
    url: str, head: str, body: bytes, timeout_s: float = 30
) -> tuple[int | str, bytes]:
    """Send `head` + `body` to the server of `url` over one socket and read the answer (its
    status and body) until the server closes or the declared length has arrived."""
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout_s
    data = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        try:
            sock.sendall(head.encode("latin-1") + body)
        except OSError as exc:
            return type(exc).__name__, b""
        while len(data) < 1 << 20 and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
            header, sep, rest = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", header)
            if sep and length and len(rest) >= int(length.group(1)):
                break
    header, _, rest = data.partition(b"\r\n\r\n")
    if not header.startswith(b"HTTP/"):
        return "no answer", b""
    return int(header.split(b" ", 2)[1]), rest


def hostname_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def path_of(url: str) -> str:
    return urlsplit(url).path


# --- model time from the replicas' logs ----------------------------------------------------------


@dataclass(frozen=True)
class ModelCall:
    deployment: str
    method: str
    outcome: str  # OK, ERROR, CANCELLED
    ms: float


def model_calls(apps: tuple[str, ...]) -> tuple[dict[str, list[ModelCall]], dict[str, float]]:
    """Model replicas' calls by request id (Serve's `CALL <method> <outcome> <ms>` lines; the
    Gateways left out), and how long cancelled calls ran on after their caller left."""
    calls: dict[str, list[ModelCall]] = {}
    ran_on: dict[str, float] = {}
    for app in apps:
        for path in replica_log_files(app, "*"):
            if "_Gateway_" in path.name:
                continue
            deployment = path.name[len(f"replica_{app}_") :].rsplit("_", 1)[0]
            for line in path.read_text(errors="replace").splitlines():
                if match := CALL_LINE.search(line):
                    rid, method, outcome, ms = match.groups()
                    calls.setdefault(rid, []).append(
                        ModelCall(deployment, method, outcome, float(ms))
                    )
                elif match := STOP_LINE.search(line):
                    ran_on[match.group(3)] = float(match.group(2))
    return calls, ran_on


def wait_for_calls(apps: tuple[str, ...], request_ids: list[str]) -> tuple[dict, dict]:
    """`model_calls` once every id in `request_ids` (requests known to reach a model) has its
    line: the log handlers have flushed what came before."""
    deadline = time.monotonic() + LOG_WAIT_S
    calls, ran_on = model_calls(apps)
    while time.monotonic() < deadline and not all(rid in calls for rid in request_ids):
        time.sleep(1)
        calls, ran_on = model_calls(apps)
    missing = [rid for rid in request_ids if rid not in calls]
    assert not missing, f"no model CALL line for {missing}"
    return calls, ran_on


# --- the requests -------------------------------------------------------------------------------


def voice_form(ref: bytes, ref_text: str, text: str, nfe: int | None = None) -> dict[str, object]:
    fields = {"ref_text": ref_text, "text": text, "format": "wav", "seed": "1"}
    if nfe is not None:
        fields["nfe_steps"] = str(nfe)
    return {"files": {"ref_audio": ("ref.mp3", ref)}, "data": fields}


def ordinary_voice(drill: Drill, voice_app: VoiceApp, ref: bytes, name: str) -> Sent:
    response = drill.send(
        "ordinary",
        name,
        (200,),
        "POST",
        f"{voice_app.url}/v1/voice/generate",
        timeout=180,
        **voice_form(ref, "hello", ONE_CHUNK),
    )
    assert response is not None and response.status_code == 200, drill.sent[-1]
    return drill.sent[-1]


def over_budget(
    drill: Drill, voice_app: VoiceApp, search_app: SearchApp, keyed: KeyedApp
) -> dict[str, str]:
    """Class 1; returns request name -> the limit the 422 must name."""
    kind, limits = "over budget", {}
    ten_s = reference_audio(seconds=10.0)
    for name, limit, form in (
        (
            "voice: 10 s reference, ref_text 'a', 'a。' x 40",
            "VOICE_REF_TEXT_MIN_BYTES_PER_SECOND",
            voice_form(ten_s, "a", "a。" * 40),
        ),
        (
            "voice: '가。' x 250 (~1000 s of speech)",
            "VOICE_MAX_OUTPUT_SECONDS",
            voice_form(ten_s, "hello there", "가。" * 250),
        ),
        (
            "voice: 'a。' x 100 at nfe_steps 128 (34 chunks)",
            "VOICE_MAX_MODEL_STEPS",
            voice_form(ten_s, "hello there", "a。" * 100, nfe=OVER_STEPS_NFE),
        ),
    ):
        drill.send(kind, name, (422,), "POST", f"{voice_app.url}/v1/voice/generate", **form)
        limits[name] = limit
    for n, size, steps in ((4, "1024x1024", 150), (4, "1024x1024", 50), (1, "1024x1024", 150)):
        name = f"images: n={n}, size={size}, steps={steps}"
        drill.send(
            kind,
            name,
            (422,),
            "POST",
            f"{keyed.url}/v1/images/generations",
            headers=bearer(OPS),
            json={"prompt": "a red fox", "n": n, "size": size, "steps": steps},
        )
        limits[name] = "IMAGE_MAX_PIXEL_STEPS"
    for count in (256, 70):
        name = f"embeddings: {count} x 1000 characters"
        drill.send(
            kind,
            name,
            (422,),
            "POST",
            f"{search_app.url}/v1/embeddings",
            json={"model": CLIP_ID, "input": ["a" * 999 + str(i % 10) for i in range(count)]},
        )
        limits[name] = "EMBEDDINGS_MAX_TOTAL_CHARS"
    return limits


def oversized_bodies(drill: Drill, voice_app: VoiceApp, keyed: KeyedApp) -> None:
    """Class 2."""
    kind = "oversized bodies"
    generations = f"{keyed.url}/v1/images/generations"
    big_json = b'{"prompt": "' + b"a" * (2 * JSON_CAP) + b'"}'
    json_headers = bearer(OPS, **{"Content-Type": "application/json"})
    drill.send(
        kind,
        "JSON over GATEWAY_MAX_JSON_BYTES, declared",
        (413,),
        "POST",
        generations,
        headers=json_headers,
        content=big_json,
    )

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(big_json), 16 * 1024):
            yield big_json[start : start + 16 * 1024]

    drill.send(
        kind,
        "JSON over GATEWAY_MAX_JSON_BYTES, chunked",
        (413,),
        "POST",
        generations,
        headers=json_headers,
        content=chunked(),
    )
    drill.send(
        kind,
        "multipart over GATEWAY_MAX_UPLOAD_BYTES, declared",
        (413,),
        "PUT",
        f"{keyed.url}/v1/voices/alice",
        headers=bearer(OPS),
        files={"audio": ("a.mp3", os.urandom(UPLOAD_CAP + UPLOAD_CAP // 2))},
    )
    boundary = "abuse0boundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; '
        'filename="a.mp3"\r\nContent-Type: audio/mpeg\r\n\r\n'
    ).encode() + b"\0" * 4096
    drill.raw(
        kind,
        "multipart declaring 1 GiB (4 kB sent)",
        (413,),
        keyed.url,
        f"PUT {path_of(keyed.url)}/v1/voices/alice HTTP/1.1\r\nHost: {hostname_of(keyed.url)}\r\n"
        f"Authorization: Bearer {OPS}\r\nX-Request-ID: {{rid}}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {1 << 30}\r\nConnection: close\r\n\r\n",
        part,
    )
    drill.send(
        kind,
        "reference audio over VOICE_MAX_REF_BYTES",
        (413,),
        "POST",
        f"{voice_app.url}/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", os.urandom(VOICE_REF_CAP + VOICE_REF_CAP // 4))},
        data={"ref_text": "hello", "text": "hi"},
    )


def hostile_ids(drill: Drill, voice_app: VoiceApp, search_app: SearchApp, keyed: KeyedApp) -> None:
    """Class 3."""
    kind, expected = "hostile ids", (404, 422)
    projects = f"{search_app.url}/v1/projects"
    for name, method, url, kwargs in (
        ("project '../../etc': list", "GET", f"{projects}/..%2F..%2Fetc/images", {}),
        (
            "project '../../etc': upload",
            "POST",
            f"{projects}/..%2F..%2Fetc/images",
            {"files": {"file": ("x.png", png(64))}},
        ),
        (
            "project '..': search",
            "POST",
            f"{projects}/%2e%2e/images/search",
            {"json": {"query": "cat"}},
        ),
        ("voice '../../secret': get", "GET", f"{voice_app.url}/v1/voices/..%2F..%2Fsecret", {}),
        (
            "voice '../x': put",
            "PUT",
            f"{voice_app.url}/v1/voices/..%2Fx",
            {"files": {"audio": ("a.mp3", reference_audio())}},
        ),
        ("voice '..': delete", "DELETE", f"{voice_app.url}/v1/voices/%2e%2e", {}),
        (
            "user_id '../../x': stored-voice generation",
            "POST",
            f"{voice_app.url}/v1/r2/voice/generate",
            {"json": {"user_id": "../../x", "text": "hi"}},
        ),
        (
            "voice '../x': /v1/audio/speech",
            "POST",
            f"{voice_app.url}/v1/audio/speech",
            {"json": {"model": "tts-1", "input": "hi", "voice": "../x"}},
        ),
        (
            "storage key '../../etc/passwd' (encoded)",
            "GET",
            f"{keyed.url}/v1/storage/..%2F..%2Fetc%2Fpasswd",
            {"headers": bearer(OPS)},
        ),
        (
            "storage key 'AI/POSTER/../../keys.yaml'",
            "GET",
            f"{keyed.url}/v1/storage/AI/POSTER/%2e%2e/%2e%2e/keys.yaml",
            {"headers": bearer(OPS)},
        ),
        (
            "storage key 'AI/VOICE/../x' (S3)",
            "GET",
            f"{voice_app.url}/v1/storage/AI/VOICE/%2e%2e%2Fx",
            {},
        ),
    ):
        drill.send(kind, name, expected, method, url, **kwargs)
    drill.raw(
        kind,
        "storage key '../../../etc/passwd' (literal on the wire)",
        expected,
        keyed.url,
        f"GET {path_of(keyed.url)}/v1/storage/../../../etc/passwd HTTP/1.1\r\n"
        f"Host: {hostname_of(keyed.url)}\r\nAuthorization: Bearer {OPS}\r\n"
        "X-Request-ID: {rid}\r\nConnection: close\r\n\r\n",
        b"",
    )


def keys(drill: Drill, keyed: KeyedApp) -> None:
    """Class 4 (the keyed app has test_api_keys' scoped key file)."""
    kind, url = "keys", keyed.url
    generations = f"{url}/v1/images/generations"
    body = {"json": ORDINARY_IMAGE}
    drill.send(kind, "no key", (401,), "POST", generations, **body)
    drill.send(
        kind,
        "an unknown key",
        (401,),
        "POST",
        generations,
        headers=bearer("not-a-key-0000"),
        **body,
    )
    for key, method, path, scope in (
        (SINGLE, "GET", "/v1/voices/alice", "module"),
        (READER, "GET", "/v1/projects/team-b/images", "project"),
        (WRITER, "DELETE", "/v1/voices/bob", "voice"),
        (READER, "DELETE", "/v1/voices/alice", "access"),
    ):
        drill.send(
            kind,
            f"{scope} scope: {method} {path}",
            (403,),
            method,
            f"{url}{path}",
            headers=bearer(key),
        )
    # `limited` may make 3 requests a minute: these three are its budget, then 429
    for i in range(3):
        drill.send(
            "ordinary",
            f"limited key, request {i + 1} of 3",
            (404,),
            "GET",
            f"{url}/v1/voices/x{i}",
            headers=bearer(LIMITED),
        )
    for i in range(2):
        drill.send(
            kind,
            f"over requests_per_minute ({i + 4}th)",
            (429,),
            "GET",
            f"{url}/v1/voices/y{i}",
            headers=bearer(LIMITED),
        )


def png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


def stored_objects(voice_app: VoiceApp, search_app: SearchApp, keyed: KeyedApp) -> set[str]:
    """Every object the drill's apps could have written."""
    pages = voice_app.s3_client().get_paginator("list_objects_v2").paginate(Bucket=voice_app.bucket)
    found = {f"voice:{item['Key']}" for page in pages for item in page.get("Contents", ())}
    found |= {f"search:{key}" for key in search_app.object_keys()}
    found |= {f"local:{p}" for p in keyed.storage_dir.rglob("*") if p.is_file()}
    return found


# --- the drill ----------------------------------------------------------------------------------


@pytest.mark.timeout(1800)  # the session's apps may start here first, on a loaded machine
def test_abuse_is_refused_fast_at_no_model_time_and_an_abandoned_request_stops(
    voice_app: VoiceApp,
    search_app: SearchApp,
    keyed_app: KeyedApp,
    drill_report: DrillReport,  # noqa: F811
) -> None:
    timer = Timer()
    drill = Drill()
    objects_before = stored_objects(voice_app, search_app, keyed_app)
    ref = reference_audio()

    # Baselines, measured alone: the ordinary voice request (twice: the first warms up) and
    # one chunk at the long request's nfe_steps.
    ordinary_voice(drill, voice_app, ref, "voice baseline (warm-up)")
    baseline = ordinary_voice(drill, voice_app, ref, "voice baseline")
    ordinary_s = baseline.seconds
    chunk = drill.send(
        "ordinary",
        f"voice, one chunk at nfe_steps {LONG_NFE}",
        (200,),
        "POST",
        f"{voice_app.url}/v1/voice/generate",
        timeout=300,
        **voice_form(ref, "hello", ONE_CHUNK, nfe=LONG_NFE),
    )
    assert chunk is not None and chunk.status_code == 200, drill.sent[-1]
    chunk_s = drill.sent[-1].seconds

    # 1. over budget, then an ordinary request: does it wait behind anything?
    limits = over_budget(drill, voice_app, search_app, keyed_app)
    after_budget = ordinary_voice(drill, voice_app, ref, "voice after the over-budget class")
    # 2-4
    oversized_bodies(drill, voice_app, keyed_app)
    hostile_ids(drill, voice_app, search_app, keyed_app)
    keys(drill, keyed_app)

    # 5. an abandoned long synthesis, then an ordinary request
    abandoned = drill.send(
        "abandoned",
        f"{len(LONG)} characters at nfe_steps {LONG_NFE}, client gives up after "
        f"{CLIENT_GIVES_UP_S:.0f} s",
        ("ReadTimeout",),
        "POST",
        f"{voice_app.url}/v1/voice/generate",
        timeout=CLIENT_GIVES_UP_S,
        **voice_form(ref, "hello", LONG, nfe=LONG_NFE),
    )
    abandoned_sent = drill.sent[-1]
    after_abandon = ordinary_voice(drill, voice_app, ref, "voice after the abandoned request")
    recovery_s = after_abandon.seconds

    # afterwards: probes and one ordinary request per module
    probes = {
        f"{name} {probe}": httpx.get(f"{url}/{probe}", timeout=30).status_code
        for name, url in (
            ("voice", voice_app.url),
            ("search", search_app.url),
            ("keyed", keyed_app.url),
        )
        for probe in ("healthz", "readyz")
    }
    image = drill.send(
        "ordinary",
        "image after",
        (200,),
        "POST",
        f"{keyed_app.url}/v1/images/generations",
        headers=bearer(OPS),
        timeout=180,
        json=ORDINARY_IMAGE,
    )
    embedding = drill.send(
        "ordinary",
        "embeddings after",
        (200,),
        "POST",
        f"{search_app.url}/v1/embeddings",
        timeout=180,
        json={"model": CLIP_ID, "input": ["a red fox"]},
    )
    new_objects = stored_objects(voice_app, search_app, keyed_app) - objects_before

    # model time per class, from the model replicas' logs (the ordinary requests must be there)
    reach_models = [s.request_id for s in drill.of("ordinary") if s.status == 200]
    calls, ran_on = wait_for_calls(("voice", "search", APP), reach_models)

    def model_time(sent: list[Sent]) -> tuple[int, float]:
        found = [call for s in sent for call in calls.get(s.request_id, [])]
        ran = sum(ran_on.get(s.request_id, 0.0) for s in sent)
        return len(found), sum(call.ms for call in found) / 1000 + ran

    lost = [
        s.name
        for s in drill.sent
        if s.kind == "ordinary" and s.status == 200 and not valid_answer(s, baseline)
    ]
    classes = ("over budget", "oversized bodies", "hostile ids", "keys")
    notes = []
    for kind in classes:
        sent = drill.of(kind)
        refused = [s for s in sent if s.as_expected]
        statuses = sorted({str(s.status) for s in sent})
        n_calls, model_s = model_time(sent)
        notes.append(
            f"{kind}: {len(sent)} tried, {len(refused)} refused as expected "
            f"({'/'.join(statuses)}), {summary(s.seconds for s in sent)}, "
            f"model calls {n_calls} ({model_s:.2f} s)"
        )
    notes.append(
        f"voice after the over-budget class {after_budget.seconds:.2f} s (alone {ordinary_s:.2f} s)"
    )
    _, abandoned_model_s = model_time([abandoned_sent])
    long_chunks = len(plan_chunks(2.0, "hello", LONG, 1.0))
    waited_without_s = long_chunks * chunk_s - abandoned_sent.seconds
    abandoned_calls = calls.get(abandoned_sent.request_id, [])
    notes.append(
        f"abandoned: client left after {abandoned_sent.seconds:.1f} s "
        f"({abandoned_sent.status}); model ran {abandoned_model_s:.2f} s in all, "
        f"{ran_on.get(abandoned_sent.request_id, float('nan')):.2f} s of it after the caller "
        f"left ({'/'.join(c.outcome for c in abandoned_calls) or 'no call'}); the next voice "
        f"request {recovery_s:.2f} s (alone {ordinary_s:.2f} s; without the cancellation it "
        f"would have waited for ~{waited_without_s:.0f} s more of the long request: "
        f"{long_chunks} chunks at nfe {LONG_NFE}, {chunk_s:.2f} s each)"
    )
    notes.append(f"probes after: {'all 200' if set(probes.values()) == {200} else probes}")
    notes.append(f"took {timer():.0f} s")
    drill_report.add(
        drill="Abuse",
        injected=f"{sum(len(drill.of(kind)) for kind in classes)} abusive requests: "
        "over-budget voice, image and embedding work, oversized bodies, ../ in ids and "
        "storage keys, missing/wrong/out-of-scope/over-rate keys; then a long synthesis "
        f"abandoned by its client after {CLIENT_GIVES_UP_S:.0f} s",
        sent=len(drill.sent),
        acknowledged=sum(1 for s in drill.sent if isinstance(s.status, int) and s.status < 300),
        lost=len(lost),
        orphans=len(new_objects),
        recovery_s=recovery_s,
        notes="; ".join(notes),
    )

    wrong = [
        f"{s.kind} / {s.name}: {s.status} {s.body[:200]!r}" for s in drill.sent if not s.as_expected
    ]
    assert not wrong, "\n".join(wrong)
    for s in drill.sent:
        if s.kind in classes:
            assert s.seconds < REFUSAL_BOUND_S, f"{s.name}: refused after {s.seconds:.2f} s"
            if "literal" not in s.name and "1 GiB" not in s.name:
                error_of(httpx.Response(int(s.status), content=s.body))
            assert not calls.get(s.request_id), (s.name, calls.get(s.request_id))
    for s in drill.of("over budget"):
        error = error_of(httpx.Response(int(s.status), content=s.body))
        assert error.get("limit") == limits[s.name], (s.name, error)
    for s in drill.of("oversized bodies"):
        assert s.code in (None, "payload_too_large"), (s.name, s.body[:200])
    for s in drill.of("keys"):
        assert (
            s.code == {401: "unauthorized", 403: "forbidden", 429: "rate_limited"}[int(s.status)]
        ), (s.name, s.body[:200])
    assert after_budget.seconds < bound(ordinary_s, 0), (after_budget.seconds, ordinary_s)
    assert abandoned is None and abandoned_sent.status == "ReadTimeout"
    assert [c.outcome for c in abandoned_calls] == ["CANCELLED"], abandoned_calls
    assert ran_on.get(abandoned_sent.request_id, 0.0) < chunk_s + 5, ran_on
    assert recovery_s < bound(ordinary_s, chunk_s), (recovery_s, ordinary_s, chunk_s)
    assert set(probes.values()) == {200}, probes
    assert image is not None and image.status_code == 200, drill.sent[-2]
    assert embedding is not None and embedding.status_code == 200, drill.sent[-1]
    assert not lost, lost
    assert not new_objects, sorted(new_objects)


def valid_answer(sent: Sent, voice_baseline: Sent) -> bool:
    """An acknowledged ordinary answer holds what it should: the baseline's speech (same
    seed), a PNG, an embedding."""
    checks: dict[str, Callable[[bytes], bool]] = {
        "voice": lambda body: body == voice_baseline.body,
        "image": lambda body: is_png(
            base64.b64decode(httpx.Response(200, content=body).json()["data"][0]["b64_json"])
        ),
        "embeddings": lambda body: len(httpx.Response(200, content=body).json()["data"]) == 1,
    }
    if "nfe_steps" in sent.name or sent.status == 404:
        return True  # the chunk baseline (other steps, other audio); the limited key's reads
    check = next(check for prefix, check in checks.items() if sent.name.startswith(prefix))
    try:
        return check(sent.body)
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def is_png(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data), formats=["PNG"]).load()
    except Exception:  # noqa: BLE001 - any decoding problem is a broken answer
        return False
    return True
