"""JobRunner: the deployment that records asynchronous jobs and runs them.

One replica (the single writer of the jobs' SQLite file, on the head node like the
VectorIndex). The Gateway's `/v1/jobs` routes call its handle methods, which are also the
handle API other Ray apps use: `submit`, `get`, `list_jobs`, `cancel`.

A background loop starts jobs, at most one per kind at a time (each model runs one request
at a time anyway; a second job would only wait in the model's queue and hold a slot
synchronous requests need), and only while the kind's module is ready, so a job waits
through a model's restart instead of spending its attempts on it. An attempt that fails
with a 503 (a replica died, a queue was full, a timeout, storage away) is retried after
JOBS_RETRY_DELAY_SECONDS until JOBS_MAX_ATTEMPTS starts were made; any other error fails
the job with the project's error body. Cancelling a running job cancels its task, which
cancels the model call (`deployment_calls.await_deployment`). On start, jobs a dead runner
left running are queued again (`JobStore.recover`).

Finished jobs' webhooks are delivered by the same loop, signed, retried with backoff from
the database (so they resume after a restart), at most a few at a time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from ray import serve
from ray.serve.handle import DeploymentHandle

from core import metrics
from core.cpu_priority import yield_cpu
from core.errors import ApiError, InvalidInput, ModelNotReady, ModuleDisabled, find_api_error
from core.jobs import JOB_KINDS, JobPage, JobSubmitted, JobView, webhook_backoff_s
from core.storage import join_key, make_object_store
from serve_app.job_store import JobRow, JobStore, NewJob
from serve_app.job_tasks import checked_images, checked_input, fingerprint, run_job
from serve_app.modules import IMAGE, IMAGE_SEARCH, VOICE, ModuleBoard, ModuleSpec
from serve_app.schemas import PROJECT_ID_PATTERN
from serve_app.services import GatewayConfig, Services
from serve_app.uploads import CheckedImage
from serve_app.webhooks import WebhookRefused, check_webhook_url, deliver

logger = logging.getLogger("ray.serve")

KIND_SPECS: dict[str, ModuleSpec] = {"image": IMAGE, "voice": VOICE, "batch_upload": IMAGE_SEARCH}
LOOP_IDLE_S = 0.5  # the loop's longest sleep: a new job or a finished one wakes it earlier
WEBHOOKS_AT_ONCE = 4
UNCOUNTED_REFUSALS = 10  # not-ready refusals of one job in a row before they count as attempts
WEBHOOK_MAX_BACKOFF_S = 900.0
PURGE_EVERY_S = 600.0


class JobRunnerConfig(BaseModel):
    """The JobRunner's settings (JOBS_*) and the Gateway config its pipelines need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gateway: GatewayConfig
    db_path: Path
    remote_prefix: str = Field(description="Where batch-upload files wait (JOBS_REMOTE_PREFIX)")
    max_queued: int = Field(ge=1)
    max_queued_per_key: int = Field(ge=1)
    max_attempts: int = Field(ge=1)
    retry_delay_s: float = Field(ge=0)
    retention_s: float = Field(gt=0)
    webhook_secret: SecretStr | None = Field(default=None, repr=False)
    webhook_max_attempts: int = Field(ge=1)
    webhook_backoff_s: float = Field(gt=0)
    webhook_allow_private: bool = False


@serve.deployment(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
class JobRunner:
    """Records jobs durably and runs them in the background (see the module docstring)."""

    def __init__(
        self,
        config: JobRunnerConfig,
        prompt_optimizer: DeploymentHandle | None = None,
        image_generator: DeploymentHandle | None = None,
        clip_embedder: DeploymentHandle | None = None,
        vector_index: DeploymentHandle | None = None,
        voice_cloner: DeploymentHandle | None = None,
    ):
        yield_cpu(config.gateway.cpu_nice)
        self._config = config
        self._store = JobStore(config.db_path, max_attempts=config.max_attempts)
        for row in self._store.recover():
            logger.warning("job %s was interrupted on its last attempt: failed", row.id)
        self._services = Services(
            config=config.gateway,
            store=make_object_store(config.gateway.storage),
            board=ModuleBoard(serve.get_replica_context().app_name, config.gateway.enabled),
            prompt_optimizer=prompt_optimizer,
            image_generator=image_generator,
            clip_embedder=clip_embedder,
            vector_index=vector_index,
            voice_cloner=voice_cloner,
        )
        self._running: dict[str, asyncio.Task[None]] = {}  # job id -> its attempt
        self._lanes: dict[str, str] = {}  # kind -> the job id running
        self._deliveries: set[str] = set()
        self._refusals: dict[str, int] = {}  # job id -> attempts refused as not ready, in a row
        self._wake = asyncio.Event()
        self._http = httpx.AsyncClient()
        self._purged_at = float("-inf")
        self._loop = asyncio.get_running_loop().create_task(self._run_forever())

    # --- the handle API -------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        request: dict[str, Any] | None = None,
        *,
        owner: str = "",
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        files: list[tuple[str, bytes]] | None = None,
        project_id: str | None = None,
    ) -> JobSubmitted:
        """Record a job; it runs in the background. `kind` "image" and "voice" take `request`,
        the JSON body of /v1/r2/images/generate or /v1/r2/voice/generate; "batch_upload"
        takes `project_id` and `files` [(filename, bytes)]. `owner` scopes the job (the API
        key's name over HTTP): another owner cannot see it. The same `idempotency_key` with
        the same request answers the first job (`created=False`); with another, 409."""
        services, config = self._services, self._config
        if kind not in JOB_KINDS:
            raise InvalidInput(
                f"kind must be one of {', '.join(JOB_KINDS)}", fields=[{"field": "kind"}]
            )
        spec = KIND_SPECS[kind]
        if not services.config.enabled.get(spec.name, False):
            raise ModuleDisabled(
                f"the {spec.name} module is disabled; set {spec.enabled_by}=1 to enable it",
                module=spec.name,
                enabled_by=spec.enabled_by,
            )
        if webhook_url is not None:
            if config.webhook_secret is None:
                raise InvalidInput(
                    "webhook_url needs JOBS_WEBHOOK_SECRET on the server (webhooks are signed)",
                    fields=[{"field": "webhook_url", "message": "webhooks are not configured"}],
                )
            await check_webhook_url(webhook_url, config.webhook_allow_private)
        job_id = f"job_{secrets.token_hex(16)}"  # 128 random bits: not guessable
        images: list[CheckedImage] = []
        if kind == "batch_upload":
            if project_id is None or not re.fullmatch(PROJECT_ID_PATTERN, project_id):
                raise InvalidInput(
                    "project_id must be 1-64 letters, digits, '_' or '-'",
                    fields=[{"field": "project_id"}],
                )
            images = await asyncio.to_thread(checked_images, services, files or [])
            request = {"project_id": project_id}
        else:
            request = checked_input(services, kind, request or {})
        print_ = fingerprint(kind, request, webhook_url, [image.sha256 for image in images])
        if idempotency_key is not None:
            existing = await self._call(self._store.find_idempotent, owner, idempotency_key, print_)
            if existing is not None:
                return JobSubmitted(job=await self._view(existing), created=False)
        inputs: list[str] = []
        if kind == "batch_upload":
            request = await self._store_inputs(job_id, project_id, images, inputs)
        job = NewJob(
            id=job_id,
            owner=owner,
            kind=kind,
            request=request,
            fingerprint=print_,
            idempotency_key=idempotency_key,
            webhook_url=webhook_url,
            inputs=tuple(inputs),
        )
        try:
            row = await self._call(
                self._store.insert,
                job,
                max_active=config.max_queued,
                max_active_per_owner=config.max_queued_per_key,
            )
        except sqlite3.IntegrityError:  # the same key won meanwhile (an earlier await)
            await self._delete_inputs(inputs)
            existing = await self._call(self._store.find_idempotent, owner, idempotency_key, print_)
            assert existing is not None
            return JobSubmitted(job=await self._view(existing), created=False)
        except BaseException:
            await self._delete_inputs(inputs)
            raise
        metrics.jobs_submitted().inc(1, tags={"kind": kind})
        self._wake.set()
        return JobSubmitted(job=await self._view(row), created=True)

    async def get(self, job_id: str, owner: str | None = "") -> JobView:
        """The job (404 when there is none, or it is another owner's; `owner=None`: any)."""
        return await self._view(await self._call(self._store.get, job_id, owner))

    async def list_jobs(
        self, owner: str = "", state: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> JobPage:
        """The owner's jobs, newest first, optionally in one state; at most `limit` (1-200)."""
        if not 1 <= limit <= 200:
            raise InvalidInput("limit must be 1-200", fields=[{"field": "limit"}])
        position = None
        if cursor is not None:
            if not cursor.isdigit():
                raise InvalidInput("invalid cursor", fields=[{"field": "cursor"}])
            position = int(cursor)
        rows, more = await self._call(
            self._store.page, owner, state=state, limit=limit, cursor=position
        )
        return JobPage(
            items=[await self._view(row) for row in rows],
            next_cursor=None if more is None else str(more),
        )

    async def cancel(self, job_id: str, owner: str | None = "") -> JobView:
        """Cancel a queued job, or a running one (its model call is abandoned); 409 when it
        has finished already, 404 as `get`."""
        row, was_running = await self._call(self._store.cancel, job_id, owner)
        self._refusals.pop(job_id, None)
        task = self._running.get(job_id)
        if was_running and task is not None:
            task.cancel()
        else:
            await self._delete_inputs(list(row.inputs))
        metrics.jobs_finished().inc(1, tags={"kind": row.kind, "state": "cancelled"})
        self._wake.set()
        return await self._view(row)

    async def stats(self) -> dict[str, int]:
        """Jobs by state."""
        return await self._call(self._store.counts)

    # --- the loop -------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._start_due_jobs()
                await self._start_due_webhooks()
                await self._purge_when_due()
                counts = await self._call(self._store.counts)
                metrics.jobs_queued().set(counts.get("queued", 0))
            except Exception:
                logger.exception("job loop turn failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=LOOP_IDLE_S)
            except TimeoutError:
                pass

    async def _start_due_jobs(self) -> None:
        for kind in JOB_KINDS:
            if kind in self._lanes or not await self._ready(kind):
                continue
            row = await self._call(self._store.claim, kind)
            if row is None:
                continue
            self._lanes[kind] = row.id
            task = asyncio.get_running_loop().create_task(self._attempt(row))
            self._running[row.id] = task

    async def _ready(self, kind: str) -> bool:
        spec = KIND_SPECS[kind]
        if not self._config.gateway.enabled.get(spec.name, False):
            return False
        try:
            await self._services.board.require_ready(spec)
        except ApiError:
            return False
        return True

    async def _attempt(self, row: JobRow) -> None:
        """One attempt of a claimed job, its outcome recorded."""
        try:
            outcome = await run_job(self._services, row.id, row.kind, row.request)
        except asyncio.CancelledError:
            # Cancelled by `cancel` (the row says so already) or the replica is stopping (the
            # row stays running and the next replica queues it again).
            if (await self._call(self._store.get, row.id)).state == "cancelled":
                await self._delete_inputs(list(row.inputs))
            raise
        except Exception as exc:
            error = find_api_error(exc)
            if error is None:
                logger.exception("job %s (%s) failed", row.id, row.kind)
                error_body = {"code": "internal_error", "message": "the job failed"}
                done = await self._call(self._store.fail, row.id, error_body)
            elif error.status_code == 503:
                logger.warning("job %s attempt %d: %s", row.id, row.attempts, error.message)
                body = error.to_body()["error"]
                # Serve reports a killed replica's deployment healthy for a moment: an attempt
                # refused by the readiness check reached no model and is not counted. A job
                # that kills its model each time is still bounded: past a few such refusals
                # in a row they count too.
                not_ready = isinstance(error, ModelNotReady)
                refusals = self._refusals.get(row.id, 0) + 1 if not_ready else 0
                self._refusals[row.id] = refusals
                counted = not not_ready or refusals > UNCOUNTED_REFUSALS
                done = await self._call(
                    self._store.retry_later,
                    row.id,
                    body,
                    self._config.retry_delay_s,
                    counted=counted,
                )
                if done is not None and not done.finished:
                    done = None  # queued again
            else:
                done = await self._call(self._store.fail, row.id, error.to_body()["error"])
        else:
            done = await self._call(self._store.succeed, row.id, outcome.result, outcome.result_key)
        finally:
            self._running.pop(row.id, None)
            if self._lanes.get(row.kind) == row.id:
                del self._lanes[row.kind]
            self._wake.set()
        if done is not None:
            self._refusals.pop(row.id, None)
            metrics.jobs_finished().inc(1, tags={"kind": row.kind, "state": done.state})
            await self._delete_inputs(list(row.inputs))

    async def _start_due_webhooks(self) -> None:
        secret = self._config.webhook_secret
        free = WEBHOOKS_AT_ONCE - len(self._deliveries)
        if secret is None or free <= 0:
            return
        for row in await self._call(self._store.due_webhooks, WEBHOOKS_AT_ONCE * 2):
            if row.id in self._deliveries or free <= 0:
                continue
            free -= 1
            self._deliveries.add(row.id)
            asyncio.get_running_loop().create_task(self._deliver(row, secret.get_secret_value()))

    async def _deliver(self, row: JobRow, secret: str) -> None:
        config = self._config
        try:
            assert row.webhook_url is not None
            await deliver(
                self._http, row.webhook_url, await self._view(row), secret,
                config.webhook_allow_private,
            )  # fmt: skip
        except (httpx.HTTPError, WebhookRefused) as exc:
            attempts = row.webhook_attempts + 1
            retry = (
                None
                if attempts >= config.webhook_max_attempts
                else webhook_backoff_s(attempts, config.webhook_backoff_s, WEBHOOK_MAX_BACKOFF_S)
            )
            reason = str(exc) or type(exc).__name__
            logger.warning("webhook of job %s, attempt %d: %s", row.id, attempts, reason)
            await self._call(self._store.webhook_failed, row.id, reason, retry)
        else:
            await self._call(self._store.webhook_delivered, row.id)
        finally:
            self._deliveries.discard(row.id)
            self._wake.set()

    async def _purge_when_due(self) -> None:
        if time.monotonic() - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = time.monotonic()
        for row in await self._call(self._store.purge, self._config.retention_s):
            await self._delete_inputs(list(row.inputs))

    # --- helpers --------------------------------------------------------------------------

    async def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """A store method, off the event loop (it commits with fsync)."""
        return await asyncio.to_thread(method, *args, **kwargs)

    async def _view(self, row: JobRow) -> JobView:
        url = None
        if row.result_key is not None:
            url = await asyncio.to_thread(self._services.store.url, row.result_key)
        position = None
        if row.state == "queued":
            position = await self._call(self._store.queue_position, row)
        return row.view(result_url=url, queue_position=position)

    async def _store_inputs(
        self, job_id: str, project_id: str | None, images: list[CheckedImage], keys: list[str]
    ) -> dict[str, Any]:
        """Put a batch upload's files under JOBS_REMOTE_PREFIX{job}/ (their keys appended to
        `keys` as they land, so a failure can delete them); the request to record."""
        files = []
        for position, image in enumerate(images):
            key = join_key(self._config.remote_prefix, job_id, f"{position}.{image.extension}")
            await asyncio.to_thread(self._services.store.put, key, image.data, image.content_type)
            keys.append(key)
            files.append({"filename": image.filename, "key": key, "sha256": image.sha256})
        return {"project_id": project_id, "files": files}

    async def _delete_inputs(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await asyncio.to_thread(self._services.store.delete, key)
            except ApiError as exc:  # the purge tries again later... or an operator
                logger.warning("cannot delete job input %s: %s", key, exc.message)

    def __del__(self) -> None:
        """Serve's shutdown hook: stop the loop. A job still running stays `running` in the
        database, and the next replica queues it again (`JobStore.recover`)."""
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.cancel()

    def check_health(self) -> None:
        """Serve's health check: the loop must be alive."""
        if self._loop.done():
            raise RuntimeError("the job loop stopped")
