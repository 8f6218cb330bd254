"""What the request's API key may do: its scope, checked where a route knows what it touches,
and its limits, counted in this Gateway replica.

The key was identified by the middleware (serve_app/auth.py), which puts its `ApiKey` in the
ASGI scope; without keys configured (a loopback bind, or AUTH_DISABLED=1) there is none and
everything is allowed. The checks are FastAPI dependencies rather than path parsing in the
middleware: the routers declare them with the ids FastAPI has already parsed and validated
(`project_id`, `voice_id`), and ids that come in a JSON body (`user_id`, `voice`) are checked
by the route with `check_voice` once its body is parsed.

- `module_access(name)`: the key lists the module (403 otherwise);
- `write_access`: uploads, deletes and saved-voice writes need `access: read-write`;
- `project_access` / `voice_access`: the id matches one of the key's ids or prefixes;
- `check_stored_object`: a stored result (GET /v1/storage/{key}) by whose project or voice
  folder it is in;
- `model_work`: the key's concurrent model work (`max_concurrent`), 429 with Retry-After.

Requests per minute are the middleware's (`KeyLimits.admit_request`): every request counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Path, Request

from core.errors import Forbidden, TooManyRequests
from serve_app.api_keys import ApiKey
from serve_app.schemas import PROJECT_ID_PATTERN, USER_ID_PATTERN

if TYPE_CHECKING:
    from serve_app.services import GatewayConfig

KEY_SCOPE = "common_ai_server.api_key"  # the request's ApiKey, in the ASGI scope
CONCURRENCY_RETRY_AFTER_S = 1


def request_key(request: Request) -> ApiKey | None:
    """The request's API key; None when the server has no keys."""
    key = request.scope.get(KEY_SCOPE)
    return key if isinstance(key, ApiKey) else None


def _forbidden(key: ApiKey, message: str, scope: str, **details: Any) -> Forbidden:
    return Forbidden(f"API key '{key.name}' {message}", key_name=key.name, scope=scope, **details)


def module_access(module: str) -> Any:
    """A dependency: the request's key may use `module` (image, image_search, voice)."""

    async def check_module(request: Request) -> None:
        key = request_key(request)
        if key is not None and not key.allows_module(module):
            raise _forbidden(key, f"may not use the {module} module", "module", module=module)

    return Depends(check_module)


async def _write_access(request: Request) -> None:
    key = request_key(request)
    if key is not None and not key.can_write:
        raise _forbidden(
            key,
            "is read-only: uploads, deletes and saved-voice changes need access: read-write",
            "access",
        )


async def _project_access(
    request: Request, project_id: Annotated[str, Path(pattern=PROJECT_ID_PATTERN)]
) -> None:
    key = request_key(request)
    if key is not None and not key.allows_project(project_id):
        raise _forbidden(
            key, f"may not touch project '{project_id}'", "project", project_id=project_id
        )


async def _voice_access(
    request: Request,
    voice_id: Annotated[str, Path(min_length=1, max_length=128, pattern=USER_ID_PATTERN)],
) -> None:
    check_voice(request, voice_id)


def check_voice(request: Request, voice_id: str) -> None:
    """403 unless the request's key may touch the saved voice `voice_id`."""
    key = request_key(request)
    if key is not None and not key.allows_voice(voice_id):
        raise _forbidden(key, f"may not touch voice '{voice_id}'", "voice", voice_id=voice_id)


def check_stored_object(request: Request, config: GatewayConfig, key: str) -> None:
    """403 unless the request's key may read the stored result `key` (GET /v1/storage): a
    search upload `{IMAGE_SEARCH_REMOTE_PREFIX}{project}/...` needs the project, generated
    speech `{VOICE_REMOTE_PREFIX}generated/{voice}/...` the voice, a generated image the
    image module."""
    api_key = request_key(request)
    if api_key is None:
        return
    owners = (
        (config.generated_voice_prefix, "voice"),
        (config.image_search_remote_prefix, "image_search"),
        (config.image_remote_prefix, "image"),
    )
    for prefix, module in sorted(owners, key=lambda owner: -len(owner[0])):
        if not key.startswith(prefix):
            continue
        if not api_key.allows_module(module):
            raise _forbidden(api_key, f"may not use the {module} module", "module", module=module)
        owner_id = key[len(prefix) :].split("/", 1)[0]
        if module == "voice":
            check_voice(request, owner_id)
        elif module == "image_search" and not api_key.allows_project(owner_id):
            raise _forbidden(
                api_key, f"may not touch project '{owner_id}'", "project", project_id=owner_id
            )
        return


async def _model_work(request: Request) -> AsyncIterator[None]:
    key = request_key(request)
    limits: KeyLimits | None = getattr(request.app.state, "key_limits", None)
    if key is None or limits is None:
        yield
        return
    with limits.model_work(key):
        yield


write_access = Depends(_write_access)
project_access = Depends(_project_access)
voice_access = Depends(_voice_access)
model_work = Depends(_model_work)


class TokenBucket:
    """`per_minute` requests a minute, refilled continuously; a full minute's worth may come
    at once."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self.tokens = self.capacity
        self._clock = clock
        self._updated = clock()

    def take(self) -> float:
        """0 when a request may go now (and it is counted), else the seconds until one may."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class KeyLimits:
    """Each key's requests per minute and concurrent model work, in this Gateway replica
    (with N replicas a key may get up to N times its limits). Used from one event loop."""

    def __init__(self, keys: Sequence[ApiKey], clock: Callable[[], float] = time.monotonic):
        self._buckets = {
            key.name: TokenBucket(key.requests_per_minute, clock)
            for key in keys
            if key.requests_per_minute is not None
        }
        self._working: dict[str, int] = {}

    def admit_request(self, key: ApiKey) -> None:
        """Count a request of `key`; 429 with Retry-After past its requests per minute."""
        bucket = self._buckets.get(key.name)
        if bucket is None:
            return
        wait_s = bucket.take()
        if wait_s > 0:
            retry_after = max(1, math.ceil(wait_s))
            raise TooManyRequests(
                f"API key '{key.name}' is over its {key.requests_per_minute} requests per "
                f"minute; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
                key_name=key.name,
                limit="requests_per_minute",
                retry_after_s=retry_after,
            )

    def working(self, key: ApiKey) -> int:
        return self._working.get(key.name, 0)

    @contextmanager
    def model_work(self, key: ApiKey) -> Iterator[None]:
        """Hold one of `key`'s concurrent model requests; 429 when all are taken."""
        busy = self.working(key)
        if key.max_concurrent is not None and busy >= key.max_concurrent:
            raise TooManyRequests(
                f"API key '{key.name}' already has {busy} model requests running, its limit "
                f"(max_concurrent); retry when one is done",
                headers={"Retry-After": str(CONCURRENCY_RETRY_AFTER_S)},
                key_name=key.name,
                limit="max_concurrent",
                retry_after_s=CONCURRENCY_RETRY_AFTER_S,
            )
        self._working[key.name] = busy + 1
        try:
            yield
        finally:
            self._working[key.name] -= 1
