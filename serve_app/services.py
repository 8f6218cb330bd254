"""What the HTTP routes work with: the gateway's config, object store, module board, handles."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from core import defaults
from core.errors import EmbeddingSpaceChanged
from core.metrics import gathered_batch_size
from core.records import EmbeddingSpace, SearchHit, SearchQuery
from core.storage import ObjectStore, StorageConfig
from core.types import ImageParams
from core.voice_cost import VoiceLimits
from serve_app.admission import InFlightLimit
from serve_app.api_keys import ApiKey
from serve_app.audio import AudioDecoder
from serve_app.call_batching import CallBatcher
from serve_app.deployment_calls import await_deployment
from serve_app.modules import IMAGE_SEARCH, ModuleBoard
from serve_app.prepared_voices import VoiceNotes


class GatewayConfig(BaseModel):
    """Everything the ingress needs, built from Settings by the app builder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: dict[str, bool]
    storage: StorageConfig
    image_remote_prefix: str
    image_search_remote_prefix: str
    voice_remote_prefix: str
    image_defaults: ImageParams
    image_max_pixels: int = Field(ge=1)
    image_search_max_bytes: int = Field(ge=1)
    image_search_max_pixels: int = Field(ge=1)
    image_search_max_batch_files: int = Field(ge=1)
    voice_max_ref_bytes: int = Field(ge=1)
    voice_max_ref_seconds: float = Field(gt=0)
    voice_max_text_chars: int = Field(ge=1)
    voice_default_nfe_steps: int = Field(ge=1)
    voice_default_cfg_strength: float = Field(ge=0)
    voice_ref_seconds_used: float = Field(default=defaults.VOICE_REF_SECONDS_USED, gt=0)
    voice_limits: VoiceLimits = Field(default_factory=VoiceLimits)
    image_max_pixel_steps: int = Field(default=defaults.IMAGE_MAX_PIXEL_STEPS, ge=1)
    embeddings_max_total_chars: int = Field(default=defaults.EMBEDDINGS_MAX_TOTAL_CHARS, ge=1)
    embedding_batch_size: int = Field(
        default=defaults.CLIP_MAX_BATCH_SIZE,
        ge=1,
        description="Most inputs one gathered CLIP or index request carries (CLIP_MAX_BATCH_SIZE)",
    )
    request_timeout_s: float = Field(gt=0)
    cpu_nice: int | None = Field(
        default=None, ge=0, le=19, description="Niceness the replica yields to (GATEWAY_CPU_NICE)"
    )
    json_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1)
    upload_max_bytes: int = Field(default=128 * 1024 * 1024, ge=1)
    body_bytes_in_flight: int = Field(default=512 * 1024 * 1024, ge=1)
    audio_decode_workers: int = Field(default=2, ge=1)
    image_max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="Generations one gateway replica lets in at once (the ImageGenerator's "
        "running + queued); the excess is refused before the prompt step. None: no limit",
    )
    search_space: EmbeddingSpace | None = Field(
        default=None,
        description="The configured CLIP model's embedding space (None: image search off)",
    )
    placement: dict[str, str] = Field(
        default_factory=dict, description="Where each GPU model runs and why (serve_app.gpu_plan)"
    )
    api_keys: tuple[ApiKey, ...] = Field(
        default=(),
        repr=False,
        description="The API keys as SHA-256 digests with their scopes (serve_app/api_keys.py); "
        "empty: no auth, allowed on a loopback bind or with AUTH_DISABLED=1",
    )
    auth_disabled: bool = Field(default=False, description="AUTH_DISABLED=1: no keys on purpose")
    dashboard_url: str | None = Field(
        default=None, description="The Ray dashboard's URL for the console (CONSOLE_DASHBOARD_URL)"
    )

    @property
    def generated_voice_prefix(self) -> str:
        """Where synthesized speech is stored: a folder of its own under VOICE_REMOTE_PREFIX,
        apart from the reference voices and transcripts (ids cannot contain '/')."""
        return f"{self.voice_remote_prefix}generated/"

    @property
    def public_prefixes(self) -> tuple[str, ...]:
        """Object prefixes whose files may be served by the local-store file route: results
        and uploads, never reference voices, transcripts or backups."""
        return (
            self.image_remote_prefix,
            self.image_search_remote_prefix,
            self.generated_voice_prefix,
        )


@dataclass
class Services:
    """Per-replica state shared by the routes."""

    config: GatewayConfig
    store: ObjectStore
    board: ModuleBoard
    # DeploymentHandles of the enabled modules; None when the module is off, which the routes
    # check through the module board (ModuleDisabled) before they use a handle.
    prompt_optimizer: Any = None
    image_generator: Any = None
    clip_embedder: Any = None
    vector_index: Any = None
    voice_cloner: Any = None
    job_runner: Any = None  # the JobRunner (JOBS_ENABLED), whose handle the /v1/jobs routes use
    # The catalog's active embedding space as last read from the VectorIndex (None: unread).
    _active_space: EmbeddingSpace | None = field(default=None, repr=False)

    @cached_property
    def voice_notes(self) -> VoiceNotes:
        """What this replica knows of prepared saved voices, by key (serve_app.prepared_voices)."""
        return VoiceNotes()

    @cached_property
    def audio_decoder(self) -> AudioDecoder:
        """This replica's bounded pool for audio decoding (AUDIO_DECODE_WORKERS)."""
        return AudioDecoder(self.config.audio_decode_workers)

    async def embed_texts(
        self, texts: list[str], space: EmbeddingSpace | None = None
    ) -> list[np.ndarray]:
        """CLIP text embeddings in `space` (None: the configured model), gathered with this
        replica's concurrent calls."""
        chosen = space or self.config.search_space
        return await self.text_embeddings([(chosen, text) for text in texts])

    async def embed_images(
        self, images: list[bytes], space: EmbeddingSpace | None = None
    ) -> list[np.ndarray]:
        """CLIP image embeddings of encoded images, gathered the same way."""
        chosen = space or self.config.search_space
        return await self.image_embeddings([(chosen, image) for image in images])

    async def in_search_space(self, attempt: Callable[[EmbeddingSpace], Awaitable[T]]) -> T:
        """`attempt(space)` with the catalog's active embedding space; once more with the new
        one when the catalog switched models in between (EmbeddingSpaceChanged)."""
        try:
            return await attempt(await self.search_space())
        except EmbeddingSpaceChanged:
            self._active_space = None
            return await attempt(await self.search_space())

    async def search_space(self) -> EmbeddingSpace:
        """The space searches and uploads must embed in (read once, then on every change)."""
        if self._active_space is None:
            self._active_space = await await_deployment(
                self.vector_index.active_space.remote(),
                what="the image index",
                timeout_s=self.config.request_timeout_s,
            )
        return self._active_space

    @cached_property
    def text_embeddings(self) -> CallBatcher[tuple[EmbeddingSpace | None, str], np.ndarray]:
        """CLIP text embeddings of (space, text) pairs, concurrent calls of this replica
        gathered into one model request per space (serve_app/call_batching.py)."""

        async def embed(items: list[tuple[EmbeddingSpace | None, str]]) -> Sequence[np.ndarray]:
            return await self._per_space(self.clip_embedder.embed_text, items, "text embedding")

        return self._batcher(embed, "text embedding")

    @cached_property
    def image_embeddings(self) -> CallBatcher[tuple[EmbeddingSpace | None, bytes], np.ndarray]:
        """CLIP image embeddings of (space, encoded image) pairs, gathered the same way."""

        async def embed(items: list[tuple[EmbeddingSpace | None, bytes]]) -> Sequence[np.ndarray]:
            return await self._per_space(self.clip_embedder.embed_images, items, "image embedding")

        return self._batcher(embed, "image embedding")

    async def _per_space(
        self, method: Any, items: list[tuple[EmbeddingSpace | None, Any]], what: str
    ) -> list[np.ndarray]:
        """One model request per space among `items`, the vectors in the items' order."""
        spaces: dict[str | None, EmbeddingSpace | None] = {}
        for space, _ in items:
            spaces.setdefault(space.key if space is not None else None, space)
        vectors: list[np.ndarray | None] = [None] * len(items)
        for key, space in spaces.items():
            positions = [
                i for i, (s, _) in enumerate(items) if (s.key if s is not None else None) == key
            ]
            found = await self._call_clip(method, [items[i][1] for i in positions], space, what)
            for position, vector in zip(positions, found, strict=True):
                vectors[position] = vector
        return [vector for vector in vectors if vector is not None]

    @cached_property
    def index_searches(self) -> CallBatcher[SearchQuery, list[SearchHit] | None]:
        """Nearest-neighbour searches, gathered into one VectorIndex call: each query's hits,
        or None when its project does not exist."""

        async def search(queries: list[SearchQuery]) -> Sequence[list[SearchHit] | None]:
            return await await_deployment(
                self.vector_index.search_many.remote(queries),
                what="the image index",
                timeout_s=self.config.request_timeout_s,
            )

        return self._batcher(search, "image search")

    def _batcher(self, call: Any, name: str) -> CallBatcher[Any, Any]:
        histogram = gathered_batch_size()
        return CallBatcher(
            call,
            max_batch_size=self.config.embedding_batch_size,
            on_send=lambda size: histogram.observe(size, tags={"call": name}),
        )

    async def _call_clip(
        self, method: Any, inputs: list[Any], space: EmbeddingSpace | None, what: str
    ) -> Sequence[np.ndarray]:
        # The space is always named: during a rolling update this replica may reach a
        # ClipEmbedder configured with another model, which then loads the one asked for.
        vectors = await await_deployment(
            method.remote(inputs) if space is None else method.remote(inputs, space),
            what=what,
            timeout_s=self.config.request_timeout_s,
            watch=self.board.watch(IMAGE_SEARCH),
        )
        return list(np.asarray(vectors, dtype=np.float32))

    @cached_property
    def image_admission(self) -> InFlightLimit:
        """This replica's count of image generations in flight (see serve_app/admission.py)."""
        return InFlightLimit(self.config.image_max_in_flight)


T = TypeVar("T")


def get_services(request: Request) -> Services:
    """FastAPI dependency: the gateway's services."""
    services: Services = request.app.state.services
    return services
