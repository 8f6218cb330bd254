"""The models the enabled modules serve, named as `GET /v1/models` lists them.

Each module's model deployment describes itself (`describe()`: the model reference it was
built with, where it came from, its embedding size). The id is that reference, which a
client may pass as `model` to the module's OpenAI route:

- a hub id stays as it is: `stabilityai/sd-turbo` (IMAGE_MODEL), `ViT-B-32` (CLIP_MODEL, an
  open_clip name), `F5TTS_v1_Base` (VOICE_MODEL_CONFIG); `hf-hub:org/repo` is `org/repo`;
- a local directory or file is named by its last path part without a file suffix
  (`local-dir:/models/clip` is `clip`, `.models/diffusion` is `diffusion`,
  `voices/custom.yaml` is `custom`; a generic file name such as `f5tts/model.yaml` by its
  folder, `f5tts`), so that no path of the server's disk shows in an id.

The Gateway replica asks a module's deployment once the module is ready (`ModelCatalog`),
keeps the answer and asks again in the background every `refresh_s`, so a model replaced
behind a running Gateway (a new CLIP_MODEL) is seen within that time. A module still
loading has no id yet and is not listed until it is ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

from core.errors import ApiError, NotFound, ServiceUnavailable
from serve_app.deployment_calls import await_deployment
from serve_app.modules import IMAGE, IMAGE_SEARCH, VOICE, ModuleSpec

logger = logging.getLogger("ray.serve")

OWNER = "common-ai-server"
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
_PATH_STARTS = ("/", "./", "../", "~")
_FILE_SUFFIXES = frozenset({".yaml", ".yml", ".json", ".pt", ".pth", ".bin", ".safetensors"})
_GENERIC_STEMS = frozenset({"model", "config", "pytorch_model", "open_clip_config"})
REFRESH_S = 30.0
LIST_WAIT_S = 5.0  # how long a listing waits for a module's first description


@dataclass(frozen=True)
class ModelSource:
    """Where a module's model is described: its deployment handle (a `Services`
    attribute), the describe() field naming the model, and the OpenAI routes using it."""

    module: ModuleSpec
    handle: str
    reference_field: str
    endpoints: tuple[str, ...]


IMAGE_MODEL = ModelSource(IMAGE, "image_generator", "model", ("/v1/images/generations",))
CLIP_MODEL = ModelSource(IMAGE_SEARCH, "clip_embedder", "model", ("/v1/embeddings",))
VOICE_MODEL = ModelSource(VOICE, "voice_cloner", "model_config", ("/v1/audio/speech",))
MODEL_SOURCES: tuple[ModelSource, ...] = (IMAGE_MODEL, CLIP_MODEL, VOICE_MODEL)


@dataclass(frozen=True)
class ServedModel:
    """One listed model: its id, owner, module and routes, and the deployment's own words."""

    id: str
    owned_by: str
    module: str
    endpoints: tuple[str, ...]
    created: int
    description: dict[str, str] = field(default_factory=dict)

    @property
    def dimensions(self) -> int | None:
        """The embedding size, for an embedding model."""
        dim = self.description.get("dim")
        return int(dim) if dim else None


class ModelNotFound(NotFound):
    """No listed model has the id (OpenAI's code for it)."""

    code = "model_not_found"


def looks_like_path(reference: str) -> bool:
    """A reference written as a path (the loaders take anything else for a hub id)."""
    ref = reference.strip()
    return (
        ref.startswith(_PATH_STARTS)
        or ref in (".", "..")
        or PurePosixPath(ref).suffix.lower() in _FILE_SUFFIXES
    )


def model_id(reference: str, *, local: bool | None = None) -> str:
    """The id of a model reference (see the module docstring). `local`: whether the
    deployment loaded it from disk; None tells by the reference's form."""
    ref = reference.strip()
    if ref.startswith(HF_HUB_PREFIX):
        return ref.removeprefix(HF_HUB_PREFIX).strip().strip("/") or ref
    if ref.startswith(LOCAL_DIR_PREFIX):
        ref, local = ref.removeprefix(LOCAL_DIR_PREFIX).strip(), True
    if local is None:
        local = looks_like_path(ref)
    if not local:
        return ref
    path = PurePosixPath(ref.replace("\\", "/").rstrip("/"))
    if path.suffix.lower() not in _FILE_SUFFIXES:
        return path.name or ref
    if path.stem.lower() in _GENERIC_STEMS and path.parent.name:  # f5tts/model.yaml
        return path.parent.name
    return path.stem or ref


def owner_of(model: str) -> str:
    """The organisation of a hub id (`stabilityai/sd-turbo` -> `stabilityai`), else ours."""
    org, slash, _ = model.partition("/")
    return org if slash and org else OWNER


def served_model(source: ModelSource, description: dict[str, Any], created: int) -> ServedModel:
    """The listed model of `source` from its deployment's describe() answer."""
    reference = str(description.get(source.reference_field) or "")
    if not reference:
        raise ValueError(f"the {source.module.name} model does not name its model")
    origin = description.get("source")
    local = None if origin is None else origin == "local"
    ident = model_id(reference, local=local)
    owned_by = OWNER if local or (local is None and looks_like_path(reference)) else owner_of(ident)
    return ServedModel(
        id=ident,
        owned_by=owned_by,
        module=source.module.name,
        endpoints=source.endpoints,
        created=created,
        description={str(key): str(value) for key, value in description.items()},
    )


@dataclass
class _Known:
    model: ServedModel
    read_at: float  # time.monotonic()


class ModelCatalog:
    """This Gateway replica's served models, one describe() per module, kept and refreshed
    in the background every `refresh_s` (one description in flight per module)."""

    def __init__(
        self,
        services: Any,  # serve_app.services.Services (Any: tests hand in stand-ins)
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._services = services
        self._refresh_s = refresh_s
        self._clock = clock
        self._known: dict[str, _Known] = {}
        self._reading: dict[str, asyncio.Task[ServedModel]] = {}

    async def model(self, source: ModelSource, timeout_s: float | None = None) -> ServedModel:
        """The module's model, described now if never yet; raises the call's ApiError (503
        family) when its deployment does not answer within `timeout_s` (default: the
        request timeout). The caller has checked the module is ready."""
        known = self._known.get(source.module.name)
        if known is not None:
            if time.monotonic() - known.read_at > self._refresh_s:
                self._read(source)  # in the background: the known answer serves meanwhile
            return known.model
        reading = self._read(source)
        wait_s = self._services.config.request_timeout_s if timeout_s is None else timeout_s
        try:
            # shield: a caller that gives up does not cancel the others' description
            return await asyncio.wait_for(asyncio.shield(reading), timeout=wait_s)
        except TimeoutError:
            raise ServiceUnavailable(
                f"the {source.module.name} model did not describe itself within {wait_s:g}s",
                headers={"Retry-After": "5"},
            ) from None

    async def listed(
        self, sources: Iterable[ModelSource], wait_s: float = LIST_WAIT_S
    ) -> tuple[list[ServedModel], list[str]]:
        """The models of `sources` whose modules are ready, in `sources`' order, and the
        names of the modules left out (disabled, loading, failed, not answering)."""
        sources = list(sources)
        answers = await asyncio.gather(*(self._try(source, wait_s) for source in sources))
        models = [answer for answer in answers if answer is not None]
        missing = [
            source.module.name
            for source, answer in zip(sources, answers, strict=True)
            if answer is None
        ]
        return models, missing

    async def _try(self, source: ModelSource, wait_s: float) -> ServedModel | None:
        try:
            await self._services.board.require_ready(source.module)
            return await self.model(source, timeout_s=wait_s)
        except ApiError as exc:
            if exc.status_code < 500:
                raise
            return None

    def _read(self, source: ModelSource) -> asyncio.Task[ServedModel]:
        name = source.module.name
        reading = self._reading.get(name)
        if reading is None or reading.done():
            reading = asyncio.get_running_loop().create_task(self._describe(source))
            reading.add_done_callback(lambda task: _log_failure(name, task))
            self._reading[name] = reading
        return reading

    async def _describe(self, source: ModelSource) -> ServedModel:
        handle = getattr(self._services, source.handle)
        if handle is None:
            raise ServiceUnavailable(f"the {source.module.name} module has no deployment")
        description = await await_deployment(
            handle.describe.remote(),
            what=f"the {source.module.name} model's description",
            timeout_s=self._services.config.request_timeout_s,
            watch=self._services.board.watch(source.module),
        )
        try:
            model = served_model(source, dict(description), int(self._clock()))
        except ValueError as exc:
            raise ServiceUnavailable(str(exc)) from None
        known = self._known.get(source.module.name)
        if known is not None and known.model.id == model.id:
            model = replace(model, created=known.model.created)  # the same model as before
        elif known is not None:
            logger.info(
                "the %s model is now %r (was %r)", source.module.name, model.id, known.model.id
            )
        self._known[source.module.name] = _Known(model, time.monotonic())
        return model


def _log_failure(module: str, task: asyncio.Task[ServedModel]) -> None:
    """Retrieve a description's failure (nobody may be waiting for it) and log it."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.warning("cannot describe the %s model: %s", module, exc)
