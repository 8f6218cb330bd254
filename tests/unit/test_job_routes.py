"""The /v1/jobs routes without Ray: the API key's scope (module, voice, project, write
access) is checked before a job reaches the JobRunner, the key's name is the job's owner,
and the Idempotency-Key header and a batch's files are handed over as sent. The JobRunner
is a stand-in recording its calls (its own behaviour: tests/unit/test_job_store.py and
tests/integration/test_jobs.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.jobs import JobSubmitted, JobView
from tests.unit.test_api_keys import (
    PLAIN,
    READER,
    SCOPED_YAML,
    WRITER,
    assert_error,
    bearer,
    make_client,
)

JOB_ID = "job_" + "ab" * 16


class Call:
    def __init__(self, value: Any) -> None:
        self._value = value

    def __await__(self) -> Any:
        async def value() -> Any:
            return self._value

        return value().__await__()

    def cancel(self) -> None:
        pass


class FakeRunner:
    """Answers every submission with a new queued job and records the call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        runner = self

        class Method:
            def remote(self, *args: Any, **kwargs: Any) -> Call:
                runner.calls.append((name, args, kwargs))
                job = JobView(
                    id=JOB_ID,
                    kind=args[0] if name == "submit" else "image",
                    state="queued",
                    attempts=0,
                    max_attempts=3,
                    created_at="2026-01-01T00:00:00.000+00:00",
                )
                return Call(JobSubmitted(job=job, created=True) if name == "submit" else job)

        return Method()


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def client(tmp_path: Path, runner: FakeRunner) -> TestClient:
    key_file = tmp_path / "keys.yaml"
    key_file.write_text(SCOPED_YAML)
    client = make_client(tmp_path, API_KEYS=PLAIN, API_KEYS_FILE=str(key_file))
    client.app.state.services.job_runner = runner  # type: ignore[attr-defined]
    return client


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


def batch(client: TestClient, key: str, project: str) -> Any:
    return client.post(
        "/v1/jobs",
        headers=bearer(key),
        data={"kind": "batch_upload", "project_id": project},
        files=[("files", ("a.png", png(), "image/png"))],
    )


def test_out_of_scope_submissions_are_403_and_reach_no_runner(
    client: TestClient, runner: FakeRunner
) -> None:
    image = {"kind": "image", "input": {"title": "t"}}
    voice = {"kind": "voice", "input": {"user_id": "bob", "text": "hi"}}
    for key, body, scope in [(READER, image, "module"), (READER, voice, "voice")]:
        answer = client.post("/v1/jobs", headers=bearer(key), json=body)
        assert assert_error(answer, 403, "forbidden")["scope"] == scope
    assert assert_error(batch(client, READER, "team-a-1"), 403, "forbidden")["scope"] == "access"
    assert assert_error(batch(client, WRITER, "team-b"), 403, "forbidden")["scope"] == "project"
    assert runner.calls == []


def test_a_submission_is_handed_over_with_its_owner_and_key(
    client: TestClient, runner: FakeRunner
) -> None:
    body = {"kind": "voice", "input": {"user_id": "alice", "text": "hi"}}
    headers = {**bearer(READER), "Idempotency-Key": "order-7"}
    answer = client.post("/v1/jobs", headers=headers, json=body)
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/v1/jobs/{JOB_ID}" and answer.json()["id"] == JOB_ID
    ((name, args, kwargs),) = runner.calls
    assert (name, args) == ("submit", ("voice", {"user_id": "alice", "text": "hi"}))
    assert kwargs["owner"] == "reader" and kwargs["idempotency_key"] == "order-7"

    assert batch(client, WRITER, "team-a-2").status_code == 202
    name, args, kwargs = runner.calls[-1]
    assert args == ("batch_upload",) and kwargs["project_id"] == "team-a-2"
    assert kwargs["owner"] == "writer" and kwargs["files"] == [("a.png", png())]

    client.get(f"/v1/jobs/{JOB_ID}", headers=bearer(PLAIN))
    client.delete(f"/v1/jobs/{JOB_ID}", headers=bearer(PLAIN))
    assert [(call[0], call[1]) for call in runner.calls[-2:]] == [
        ("get", (JOB_ID, "API_KEYS#1")),
        ("cancel", (JOB_ID, "API_KEYS#1")),
    ]


def test_malformed_submissions(client: TestClient, runner: FakeRunner) -> None:
    headers = {**bearer(PLAIN), "Content-Type": "application/json"}
    assert_error(client.post("/v1/jobs", headers=headers, content=b"{nope"), 400, "malformed_json")
    wrong = client.post("/v1/jobs", headers=bearer(PLAIN), json={"kind": "batch_upload"})
    assert assert_error(wrong, 422, "invalid_request")["fields"][0]["field"] == "kind"
    extra = client.post(
        "/v1/jobs", headers=bearer(PLAIN), json={"kind": "image", "input": {}, "x": 1}
    )
    assert_error(extra, 422, "invalid_request")
    bad_key = client.post(
        "/v1/jobs",
        headers={**bearer(PLAIN), "Idempotency-Key": "x" * 300},
        json={"kind": "image", "input": {"title": "t"}},
    )
    assert_error(bad_key, 422, "invalid_request")
    assert client.get("/v1/jobs/not-a-job-id", headers=bearer(PLAIN)).status_code == 422
    assert runner.calls == []


def test_jobs_off_is_503(tmp_path: Path) -> None:
    client = make_client(tmp_path)
    answer = client.post("/v1/jobs", json={"kind": "image", "input": {"title": "t"}})
    assert assert_error(answer, 503, "module_disabled")["enabled_by"] == "JOBS_ENABLED"
    assert_error(client.get(f"/v1/jobs/{JOB_ID}"), 503, "module_disabled")
