"""Drill: hostile input. Schemathesis against both apps' OpenAPI schemas, then hand-made cases.

Schemathesis (its CLI, in a subprocess, bounded by --max-examples, per-request timeouts and
a wall-clock limit) sends schema-derived and schema-violating requests to every route of the
image app and of the search app (each without the routes of its disabled module, which
answer 503 `module_disabled` by design): no 5xx, no response slower than
`--max-response-time`. It draws ids from the schema only, never from earlier answers
(`extra-data-sources.responses = false` in every phase): with them it learns the seed
project from `GET /v1/projects` and may delete or add images there through the API, as any
client may, and the drill could no longer tell that from hostile input losing data.

The hand-made cases are the ones a generator does not think of: polyglot files (a PNG with a
ZIP appended, a GIF whose header is also JavaScript), multipart bodies without or with a
broken boundary, path traversal, NUL bytes and 10 kB ids in project and image ids, text that
is not UTF-8 in JSON and in multipart fields, and negative or huge `limit`s in the query and
in the body. Each gets its 4xx with a JSON reason, nothing is stored, and the servers stay
healthy.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.integration.conftest import DeployedApp, SearchApp
from tests.integration.test_image_search import make_image
from tests.support.drills import (
    DrillReport,
    Timer,
    drill_report,  # noqa: F401 - fixture
    error_of,
    reconcile_all,
)

MAX_EXAMPLES = int(os.environ.get("DRILL_SCHEMATHESIS_MAX_EXAMPLES", "8"))
SEED = os.environ.get("DRILL_SCHEMATHESIS_SEED", "20261125")
RUN_LIMIT_S = 420  # the whole schemathesis run of one app
# Values captured from answers (ids from listings and uploads) stay out of every phase.
NO_LEARNED_VALUES = "".join(
    f"[phases.{phase}.extra-data-sources]\nresponses = false\n"
    for phase in ("examples", "coverage", "fuzzing")
)
# Routes of the modules each app disables: they answer 503 module_disabled by design.
VOICE_ROUTES = "audio/|voices?(/|$)|r2/voice/"  # plus everything tagged "voice"
JOBS_ROUTES = "jobs(/|$)"  # JOBS_ENABLED=0 in both apps (test_jobs.py runs its own)
SKIPPED_ROUTES = {
    "image": rf"^/v1/(projects(/|$)|embeddings|{VOICE_ROUTES}|{JOBS_ROUTES})",
    "search": rf"^/v1/(images/generat|r2/images/|{VOICE_ROUTES}|{JOBS_ROUTES})",
}


def schemathesis(base_url: str, exclude_path_regex: str, workdir: Path) -> tuple[int, str]:
    """Run schemathesis against one app; (number of generated cases, output)."""
    config = workdir / "schemathesis.toml"
    config.write_text(NO_LEARNED_VALUES)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{base_url}/openapi.json",
        "--url",
        base_url,
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--exclude-path-regex",
        exclude_path_regex,
        "--exclude-tag",
        "voice",
        "--request-timeout",
        "60",
        "--max-response-time",
        "30",
        "--workers",
        "1",
        "--seed",
        SEED,
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    done = subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-4000:]
    return int(generated.group(1)), output


# --- hand-made cases ------------------------------------------------------------------------


def png_with_zip() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("payload.js", "alert(document.cookie)")
    return make_image(60_000) + archive.getvalue()


def gif_js_polyglot() -> bytes:
    """A GIF whose first bytes also read as JavaScript: `GIF89a/*` opens a comment (the
    canvas width is 0x2A2F, '/*'), closed after the image's trailer by `*/=alert(1)//`."""
    gif = io.BytesIO()
    Image.new("RGB", (0x2A2F, 1), "white").save(gif, format="GIF")
    data = gif.getvalue()
    assert data[6:8] == b"/*"
    return data + b"*/=alert(1)//"


def multipart(boundary: bytes, parts: list[tuple[bytes, bytes]], close: bool = True) -> bytes:
    """A hand-written multipart body: each part is (Content-Disposition params, content)."""
    body = b""
    for disposition, content in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition
        body += b"\r\nContent-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str  # relative to the app's URL; may hold {pid} and {iid}
    app: str = "search"  # or "image"
    kwargs: tuple = ()  # (key, value) pairs for httpx.request
    statuses: tuple[int, ...] = (422,)


IMAGE_FILE = (b'name="file"; filename="x.png"', make_image(60_001))
LONG = "a" * 10_000


def cases() -> list[Case]:
    upload = "/v1/projects/{pid}/images"
    form = "multipart/form-data"
    listed = [
        Case(
            "PNG with a ZIP appended",
            "POST",
            upload,
            kwargs=(("files", {"file": ("x.png", png_with_zip())}),),
            statuses=(415,),
        ),
        Case(
            "GIF + JavaScript polyglot",
            "POST",
            upload,
            kwargs=(("files", {"file": ("x.gif", gif_js_polyglot())}),),
            statuses=(415,),
        ),
        Case(
            "multipart without a boundary",
            "POST",
            upload,
            kwargs=(
                ("content", multipart(b"b0und", [IMAGE_FILE])),
                ("headers", {"content-type": form}),
            ),
            statuses=(400,),
        ),
        Case(
            "multipart with an empty boundary",
            "POST",
            upload,
            kwargs=(
                ("content", multipart(b"b0und", [IMAGE_FILE])),
                ("headers", {"content-type": f"{form}; boundary="}),
            ),
            statuses=(400,),
        ),
        Case(
            "multipart with another boundary than declared",
            "POST",
            upload,
            kwargs=(
                ("content", multipart(b"b0und", [IMAGE_FILE])),
                ("headers", {"content-type": f"{form}; boundary=other"}),
            ),
            statuses=(400,),
        ),
        Case(
            "multipart never closed",
            "POST",
            upload,
            kwargs=(
                ("content", multipart(b"b0und", [IMAGE_FILE], close=False)[:-40]),
                ("headers", {"content-type": f"{form}; boundary=b0und"}),
            ),
            statuses=(400, 415, 422),
        ),
        Case(
            "multipart 'file' as non-UTF-8 text",
            "POST",
            upload,
            kwargs=(
                ("content", multipart(b"b0und", [(b'name="file"', b"\xff\xfe\xc3\x28")])),
                ("headers", {"content-type": f"{form}; boundary=b0und"}),
            ),
            statuses=(400, 422),
        ),
        Case(
            "multipart non-UTF-8 filename, not an image",
            "POST",
            upload,
            kwargs=(
                (
                    "content",
                    multipart(
                        b"b0und", [(b'name="file"; filename="\xff\xfe.png"', b"not an image")]
                    ),
                ),
                ("headers", {"content-type": f"{form}; boundary=b0und"}),
            ),
            statuses=(415,),
        ),
        Case(
            "multipart non-UTF-8 field name",
            "POST",
            upload,
            kwargs=(
                (
                    "content",
                    multipart(
                        b"b0und", [(b'name="\xff\xfe"; filename="a.png"', make_image(60_002))]
                    ),
                ),
                ("headers", {"content-type": f"{form}; boundary=b0und"}),
            ),
            statuses=(422,),
        ),
        Case(
            "JSON that is not UTF-8 (search)",
            "POST",
            "/v1/projects/{pid}/images/search",
            kwargs=(
                ("content", b'{"query": "caf\xe9 \xff"}'),
                ("headers", {"content-type": "application/json"}),
            ),
            statuses=(400,),
        ),
        Case(
            "JSON that is not UTF-8 (generate)",
            "POST",
            "/v1/images/generate",
            app="image",
            kwargs=(
                ("content", b'{"title": "caf\xe9 \xff"}'),
                ("headers", {"content-type": "application/json"}),
            ),
            statuses=(400,),
        ),
        Case(
            "JSON with a lone surrogate (generate)",
            "POST",
            "/v1/images/generate",
            app="image",
            kwargs=(
                ("content", b'{"title": "\\ud800"}'),
                ("headers", {"content-type": "application/json"}),
            ),
            statuses=(422,),
        ),
        Case(
            "huge width (generate)",
            "POST",
            "/v1/images/generate",
            app="image",
            kwargs=(("json", {"title": "x", "width": 10**30}),),
        ),
        Case(
            "negative steps (generate)",
            "POST",
            "/v1/images/generate",
            app="image",
            kwargs=(("json", {"title": "x", "steps": -1}),),
        ),
    ]
    for label, project in (
        ("../", "..%2F..%2Fetc"),
        ("%2e%2e/", "%2e%2e%2f%2e%2e%2fetc"),
        ("%2e%2e", "%2e%2e"),
        ("NUL", "p%00id"),
        ("10 kB", LONG),
    ):
        for what, method, path, kwargs in (
            (
                "upload",
                "POST",
                "/v1/projects/{}/images",
                (("files", {"file": ("x.png", make_image(60_003))}),),
            ),
            ("list", "GET", "/v1/projects/{}/images", ()),
            ("search", "POST", "/v1/projects/{}/images/search", (("json", {"query": "cat"}),)),
        ):
            listed.append(
                Case(
                    f"project id {label}: {what}",
                    method,
                    path.format(project),
                    kwargs=kwargs,
                    statuses=(404, 422),
                )
            )
    for label, image in (
        ("../", "..%2F..%2Fx"),
        ("%2e%2e/", "%2e%2e%2f%2e%2e"),
        ("%2e%2e", "%2e%2e"),
        ("NUL", "a%00b"),
        ("10 kB", LONG),
    ):
        path = f"/v1/projects/{{pid}}/images/{image}"
        listed.append(Case(f"image id {label}: file", "GET", f"{path}/file", statuses=(404, 422)))
        listed.append(Case(f"image id {label}: delete", "DELETE", path, statuses=(404, 422)))
    for value in ("maybe", "", "1" * 100, "tru%00e"):
        listed.append(
            Case(
                f"real image file ?redirect={value[:8]}",
                "GET",
                "/v1/projects/{pid}/images/{iid}/file",
                kwargs=(("params", {"redirect": value}),),
            )
        )
    for cursor in ("../..", "a%00b", LONG, "\u0000", "' OR 1=1 --"):
        listed.append(
            Case(
                f"projects ?cursor={cursor[:8]}",
                "GET",
                "/v1/projects",
                kwargs=(("params", {"cursor": cursor}),),
            )
        )
    for value in ("-1", "0", "-99999999999999999999", "1" + "0" * 30, "1e3", "NaN"):
        listed.append(
            Case(
                f"list ?limit={value[:12]}",
                "GET",
                "/v1/projects/{pid}/images",
                kwargs=(("params", {"limit": value}),),
            )
        )
        # The fuzzer draws no real ids (see the module's docstring): these reach a real image.
        listed.append(
            Case(
                f"similar ?limit={value[:12]}",
                "GET",
                "/v1/projects/{pid}/images/{iid}/similar",
                kwargs=(("params", {"limit": value}),),
            )
        )
        listed.append(
            Case(
                f"projects ?limit={value[:12]}",
                "GET",
                "/v1/projects",
                kwargs=(("params", {"limit": value}),),
            )
        )
        listed.append(
            Case(
                f"by-image ?limit={value[:12]}",
                "POST",
                "/v1/projects/{pid}/images/search/by-image",
                kwargs=(
                    ("params", {"limit": value}),
                    ("files", {"file": ("q.png", make_image(60_001))}),
                ),
            )
        )
    for value in (
        b"-1",
        b"0",
        b"-1" + b"0" * 30,
        b"1" + b"0" * 30,
        b"1e308",
        b"1e400",
        b"NaN",
        b"-Infinity",
        b"1.5",
        b"[5]",
        b"{}",
    ):
        listed.append(
            Case(
                f"search body limit {value.decode()[:12]}",
                "POST",
                "/v1/projects/{pid}/images/search",
                kwargs=(
                    ("content", b'{"query": "cat", "limit": ' + value + b"}"),
                    ("headers", {"content-type": "application/json"}),
                ),
            )
        )
    return listed


# Two schemathesis runs of up to RUN_LIMIT_S each, the hand-made cases, and (when this test
# comes first) the session's Ray and apps starting: more than the suite's default timeout.
@pytest.mark.timeout(2 * RUN_LIMIT_S + 600)
def test_hostile_input_gets_4xx_and_leaves_nothing(
    app: DeployedApp,
    search_app: SearchApp,
    drill_report: DrillReport,  # noqa: F811
    tmp_path: Path,
) -> None:
    timer = Timer()
    books_before = reconcile_all(search_app)
    project_id = f"hostile-{uuid.uuid4().hex[:8]}"
    seed = httpx.post(
        f"{search_app.url}/v1/projects/{project_id}/images",
        files={"file": ("seed.png", make_image(60_001))},
        timeout=60,
    )
    assert seed.status_code == 201, seed.text
    image_id = seed.json()["id"]

    wrong: list[str] = []
    handmade = cases()
    for case in handmade:
        base = search_app.url if case.app == "search" else app.url
        url = base + case.path.format(pid=project_id, iid=image_id)
        try:
            response = httpx.request(case.method, url, timeout=60, **dict(case.kwargs))
        except httpx.HTTPError as exc:
            wrong.append(f"{case.name}: {exc!r}")
            continue
        if response.status_code not in case.statuses:
            wrong.append(f"{case.name}: {response.status_code} {response.text[:200]}")
            continue
        try:
            error_of(response)
        except AssertionError as exc:
            wrong.append(f"{case.name}: {exc}")
    healthy_after_handmade = [
        httpx.get(f"{url}/healthz", timeout=10).status_code for url in (app.url, search_app.url)
    ]

    generated: dict[str, int] = {}
    for name, url in (("image", app.url), ("search", search_app.url)):
        generated[name], _ = schemathesis(url, SKIPPED_ROUTES[name], tmp_path)

    healthz = [
        httpx.get(f"{url}/healthz", timeout=10).status_code for url in (app.url, search_app.url)
    ]
    readyz = [
        httpx.get(f"{url}/readyz", timeout=30).status_code for url in (app.url, search_app.url)
    ]
    stored = search_app.object_keys(f"AI/SEARCH/{project_id}/")
    listed = httpx.get(f"{search_app.url}/v1/projects/{project_id}/images", timeout=30).json()
    books_after = reconcile_all(search_app)
    new_orphans = (books_after.objects_without_rows - books_before.objects_without_rows) | (
        books_after.rows_without_objects - books_before.rows_without_objects
    )
    drill_report.add(
        drill="Hostile input",
        injected=f"schemathesis (examples, coverage, fuzzing; {MAX_EXAMPLES} examples per "
        f"operation) on both apps, and {len(handmade)} hand-made cases",
        sent=len(handmade) + sum(generated.values()),
        acknowledged=0,
        lost=0 if [i["id"] for i in listed["items"]] == [image_id] else 1,
        orphans=len(new_orphans),
        recovery_s=None,
        notes=f"schemathesis cases: image app {generated['image']}, search app "
        f"{generated['search']}, 5xx 0; hand-made answered other than expected: {len(wrong)}; "
        f"took {timer():.0f} s",
    )

    assert not wrong, "\n".join(wrong)
    assert healthy_after_handmade == [200, 200]
    assert healthz == [200, 200] and readyz == [200, 200]
    assert stored == {f"AI/SEARCH/{project_id}/{image_id}.png"}
    assert [item["id"] for item in listed["items"]] == [image_id]
    assert not new_orphans, sorted(new_orphans)


@pytest.mark.parametrize("polyglot", [png_with_zip, gif_js_polyglot])
def test_polyglots_decode_as_images(polyglot) -> None:
    """The polyglots are real images (Pillow decodes them): the server must look further."""
    with Image.open(io.BytesIO(polyglot())) as image:
        image.load()
