"""Asynchronous jobs: `POST /v1/jobs`, `GET /v1/jobs[/{id}]`, `DELETE /v1/jobs/{id}`.

The routes check the API key's scope and hand the submission to the JobRunner deployment,
which validates it as the synchronous route would, records it (committed before the answer)
and runs it in the background (serve_app/job_runner.py). A job belongs to the key that
submitted it: another key gets 404 for it, as for a job that does not exist.

- JSON `{"kind": "image" | "voice", "input": {<the body of /v1/r2/images/generate or
  /v1/r2/voice/generate>}, "webhook_url": optional}`;
- multipart with the fields `kind=batch_upload`, `project_id`, optional `webhook_url`, and
  the files as `files` (the body of `POST /v1/projects/{id}/images/batch`).

202 with the job for a new one; 200 with the earlier job when the `Idempotency-Key` header
repeats an earlier submission of the same request; 409 when it was used for another.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError

from core.errors import Forbidden, InvalidInput, ModuleDisabled
from core.jobs import KIND_MODULES, JobPage, JobSubmitted, JobView
from serve_app.access import check_voice, request_key
from serve_app.deployment_calls import await_deployment
from serve_app.schemas import ERROR_RESPONSES, ErrorResponse, _Strict
from serve_app.services import Services, get_services
from serve_app.uploads import read_multipart

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)
ServicesDep = Annotated[Services, Depends(get_services)]
JobId = Annotated[str, Path(pattern=r"^job_[0-9a-f]{32}$")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Resubmitting with the same key and body answers the first job",
    ),
]
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorResponse, "description": "No such job (or another API key's)"},
    409: {"model": ErrorResponse, "description": "Finished already / key used for another body"},
}


class JobCreate(_Strict):
    """The JSON body of `POST /v1/jobs` (image and voice jobs)."""

    kind: Literal["image", "voice"]
    input: dict[str, Any] = Field(description="The body the synchronous route takes")
    webhook_url: str | None = Field(default=None, max_length=2048)


class BatchJobFields(_Strict):
    """The text fields of a multipart batch-upload job."""

    kind: Literal["batch_upload"]
    project_id: str = Field(min_length=1, max_length=64)
    webhook_url: str | None = Field(default=None, max_length=2048)


def _owner(request: Request) -> str:
    """Whose the job is: the API key's name ('' on a server without keys)."""
    key = request_key(request)
    return "" if key is None else key.name


def _runner(services: Services) -> Any:
    if services.job_runner is None:
        raise ModuleDisabled(
            "asynchronous jobs are disabled; set JOBS_ENABLED=1 to enable them",
            module="jobs",
            enabled_by="JOBS_ENABLED",
        )
    return services.job_runner


async def _ask(services: Services, response: Any) -> Any:
    return await await_deployment(
        response, what="the job queue", timeout_s=services.config.request_timeout_s
    )


def _check_scope(request: Request, kind: str, *, user_id: Any = None, project: str = "") -> None:
    key = request_key(request)
    if key is None:
        return
    module = KIND_MODULES[kind]
    if not key.allows_module(module):
        raise Forbidden(
            f"API key '{key.name}' may not use the {module} module",
            key_name=key.name,
            scope="module",
            module=module,
        )
    if kind == "voice" and isinstance(user_id, str):
        check_voice(request, user_id)
    if kind == "batch_upload":
        if not key.can_write:
            raise Forbidden(
                f"API key '{key.name}' is read-only: uploads need access: read-write",
                key_name=key.name,
                scope="access",
            )
        if not key.allows_project(project):
            raise Forbidden(
                f"API key '{key.name}' may not touch project '{project}'",
                key_name=key.name,
                scope="project",
                project_id=project,
            )


def _validated(model: type[_Strict], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


@router.post(
    "",
    status_code=202,
    response_model=JobView,
    responses={
        200: {"model": JobView, "description": "The earlier job of this key"},
        **JOB_RESPONSES,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": JobCreate.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["kind", "project_id", "files"],
                        "properties": {
                            "kind": {"type": "string", "enum": ["batch_upload"]},
                            "project_id": {"type": "string"},
                            "webhook_url": {"type": "string"},
                            "files": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                        },
                    }
                },
            },
        }
    },
)
async def submit_job(
    request: Request, services: ServicesDep, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Accept a job (committed before this answers) and run it in the background; poll
    `GET /v1/jobs/{id}` or pass `webhook_url`."""
    owner = _owner(request)
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        runner = _runner(services)  # before a large body is read
        config = services.config
        body = await read_multipart(
            request,
            max_file_bytes=config.image_search_max_bytes,
            max_files=config.image_search_max_batch_files,
            what="files",
        )
        fields = _validated(BatchJobFields, body.fields)
        _check_scope(request, "batch_upload", project=fields.project_id)
        files = [(upload.filename, upload.data) for upload in body.files_named("files")]
        call = runner.submit.remote(
            "batch_upload",
            owner=owner,
            idempotency_key=idempotency_key,
            webhook_url=fields.webhook_url,
            files=files,
            project_id=fields.project_id,
        )
    else:
        try:
            data = json.loads(await request.body())
        except ValueError:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "msg": "not valid JSON"}]
            ) from None
        if isinstance(data, dict) and data.get("kind") == "batch_upload":
            raise InvalidInput(
                "a batch_upload job is a multipart/form-data body (kind, project_id, files)",
                fields=[{"field": "kind", "message": "needs a multipart body"}],
            )
        job = _validated(JobCreate, data)
        _check_scope(request, job.kind, user_id=job.input.get("user_id"))
        call = _runner(services).submit.remote(
            job.kind,
            job.input,
            owner=owner,
            idempotency_key=idempotency_key,
            webhook_url=job.webhook_url,
        )
    submitted: JobSubmitted = await _ask(services, call)
    return JSONResponse(
        submitted.job.model_dump(mode="json"),
        status_code=202 if submitted.created else 200,
        headers={"Location": f"/v1/jobs/{submitted.job.id}"},
    )


@router.get("/{job_id}", response_model=JobView, responses=JOB_RESPONSES)
async def get_job(job_id: JobId, request: Request, services: ServicesDep) -> JobView:
    """The job's state, attempts, timings, and once it succeeded its result (the
    synchronous route's body), `result_key` and `result_url`."""
    view: JobView = await _ask(services, _runner(services).get.remote(job_id, _owner(request)))
    return view


@router.get("", response_model=JobPage, responses=JOB_RESPONSES)
async def list_jobs(
    request: Request,
    services: ServicesDep,
    state: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=32, pattern=r"^[0-9]+$")] = None,
) -> JobPage:
    """This API key's jobs, newest first; follow `next_cursor` for more."""
    runner = _runner(services)
    page: JobPage = await _ask(
        services, runner.list_jobs.remote(_owner(request), state, limit, cursor)
    )
    return page


@router.delete("/{job_id}", response_model=JobView, responses=JOB_RESPONSES)
async def cancel_job(job_id: JobId, request: Request, services: ServicesDep) -> JobView:
    """Cancel a queued or running job (a running model call is abandoned); 409 once it has
    finished."""
    view: JobView = await _ask(services, _runner(services).cancel.remote(job_id, _owner(request)))
    return view
