"""Every environment variable the server reads, parsed and validated in one place.

The names and defaults of the seed spec (section 6) are kept; the rest are what running the
server for real needs (model locations, OpenAI endpoint and timeout, S3 endpoint override,
local storage directory, GPU counts). Only the application builder calls `load_settings`;
deployments receive typed configs derived from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from core import defaults
from core.errors import InvalidKey
from core.storage import validate_prefix
from core.types import Device, TorchDType
from serve_app.api_keys import ApiKey, KeyFileError, configured_keys

# A model's GPUs: "auto" (share the cluster's GPUs, serve_app.gpu_plan) or a number
# (0 = CPU; a fraction below 1 shares a card; a whole number above 1 is several cards).
GpuRequest = Annotated[float, Field(ge=0)] | Literal["auto"]
# Object-store folders of the server's objects: each validated, and none inside another.
_STORE_PREFIXES = (
    "image_remote_prefix",
    "image_search_remote_prefix",
    "voice_remote_prefix",
    "image_search_db_backup_prefix",
    "jobs_remote_prefix",
)


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """Server settings from the environment and an optional `.env` file."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
    )

    # --- seed 6.1: modules and DB ---------------------------------------------------------
    image_enabled: bool = True
    image_search_enabled: bool = True
    voice_enabled: bool = True
    # The seed's example turns R2 on; the default here is the embedded local store so that a
    # server with no credentials still starts. Set R2_ENABLED=1 for Cloudflare R2 / S3.
    r2_enabled: bool = False
    image_search_db_path: Path = Path("app/image_search.db")
    image_search_db_backup_enabled: bool = True
    image_search_db_backup_interval_seconds: int = Field(
        default=defaults.DB_BACKUP_INTERVAL_S, ge=10
    )

    # --- seed 6.2: external services ------------------------------------------------------
    openai_api_key: SecretStr | None = None
    openai_prompt_model: str = Field(default=defaults.OPENAI_PROMPT_MODEL, min_length=1)
    openai_base_url: str | None = None
    openai_timeout_seconds: float = Field(default=defaults.OPENAI_TIMEOUT_S, gt=0, le=600)
    openai_max_retries: int = Field(default=defaults.OPENAI_MAX_RETRIES, ge=0, le=10)

    r2_account_id: str | None = None
    r2_access_key_id: str | None = None
    r2_secret_access_key: SecretStr | None = None
    r2_bucket_name: str | None = None
    r2_endpoint_url: str | None = None  # any S3-compatible server; derived from the account id
    r2_region: str = defaults.R2_REGION
    r2_presign_expires_seconds: int = Field(
        default=defaults.PRESIGN_EXPIRES_S, ge=1, le=7 * 24 * 3600
    )
    r2_timeout_seconds: float = Field(default=defaults.STORAGE_TIMEOUT_S, gt=0, le=300)

    # --- seed 6.3: paths and limits -------------------------------------------------------
    image_remote_prefix: str = "AI/POSTER/"
    image_search_remote_prefix: str = defaults.IMAGE_SEARCH_REMOTE_PREFIX
    voice_remote_prefix: str = "AI/VOICE/"
    image_search_max_elements: int = Field(default=50_000, ge=1)
    image_search_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)

    # --- storage --------------------------------------------------------------------------
    local_storage_dir: Path = Path(defaults.LOCAL_STORAGE_DIR)
    storage_public_base_url: str | None = None  # e.g. an R2 public bucket or CDN domain

    # --- image generation -----------------------------------------------------------------
    image_model: str = Field(default=defaults.IMAGE_MODEL, min_length=1)
    image_device: Device = "auto"
    image_dtype: TorchDType = "auto"
    image_num_gpus: GpuRequest = "auto"
    image_num_cpus: float = Field(default=1.0, gt=0)
    image_max_queued_requests: int = Field(default=defaults.IMAGE_MAX_QUEUED_REQUESTS, ge=-1)
    image_default_width: int = Field(default=defaults.IMAGE_WIDTH, ge=64, le=2048, multiple_of=8)
    image_default_height: int = Field(default=defaults.IMAGE_HEIGHT, ge=64, le=2048, multiple_of=8)
    image_default_steps: int = Field(default=defaults.IMAGE_STEPS, ge=1, le=150)
    image_default_guidance_scale: float = Field(default=defaults.IMAGE_GUIDANCE_SCALE, ge=0, le=30)
    image_max_pixels: int = Field(default=1024 * 1024, ge=64 * 64)
    # n x steps x width x height of one request (422 over_budget past it)
    image_max_pixel_steps: int = Field(default=defaults.IMAGE_MAX_PIXEL_STEPS, ge=1)

    # --- image search -----------------------------------------------------------------------
    clip_model: str = Field(default=defaults.CLIP_MODEL, min_length=1)
    clip_pretrained: str | None = defaults.CLIP_PRETRAINED
    clip_embed_dim: int | None = Field(default=None, ge=1)
    clip_device: Device = "auto"
    clip_dtype: TorchDType = "auto"
    clip_num_gpus: GpuRequest = "auto"
    clip_num_cpus: float = Field(default=1.0, gt=0)
    clip_max_queued_requests: int = Field(default=defaults.CLIP_MAX_QUEUED_REQUESTS, ge=-1)
    clip_max_batch_size: int = Field(default=defaults.CLIP_MAX_BATCH_SIZE, ge=1)
    # The model that made the vectors of a catalog from before schema 2 (which did not record
    # it): what the catalog searches with until re-embedding for CLIP_MODEL is done.
    image_search_legacy_model: str = Field(default=defaults.IMAGE_SEARCH_LEGACY_MODEL, min_length=1)
    image_search_legacy_pretrained: str = defaults.IMAGE_SEARCH_LEGACY_PRETRAINED
    image_search_reembed_batch: int = Field(
        default=defaults.IMAGE_SEARCH_REEMBED_BATCH, ge=1, le=256
    )
    image_search_reembed_busy_batch: int = Field(
        default=defaults.IMAGE_SEARCH_REEMBED_BUSY_BATCH, ge=1, le=256
    )
    image_search_max_pixels: int = Field(default=defaults.IMAGE_SEARCH_MAX_PIXELS, ge=1)
    image_search_max_batch_files: int = Field(default=32, ge=1, le=256)
    # The characters of all inputs of one /v1/embeddings request together
    embeddings_max_total_chars: int = Field(default=defaults.EMBEDDINGS_MAX_TOTAL_CHARS, ge=1)
    image_search_hnsw_m: int = Field(default=defaults.HNSW_M, ge=2, le=256)
    image_search_hnsw_ef_construction: int = Field(default=defaults.HNSW_EF_CONSTRUCTION, ge=1)
    image_search_hnsw_ef_search: int = Field(default=defaults.HNSW_EF_SEARCH, ge=1)
    image_search_db_backup_prefix: str = defaults.DB_BACKUP_PREFIX
    image_search_db_backup_keep: int = Field(default=defaults.DB_BACKUP_KEEP, ge=1)

    # --- voice cloning ----------------------------------------------------------------------
    voice_model_config: str = Field(default=defaults.VOICE_MODEL_CONFIG, min_length=1)
    voice_checkpoint: str = Field(default=defaults.VOICE_CHECKPOINT, min_length=1)
    voice_vocab: str | None = None
    voice_vocoder: str = Field(default=defaults.VOICE_VOCODER, min_length=1)
    voice_asr_model: str = Field(default=defaults.VOICE_ASR_MODEL, min_length=1)
    voice_device: Device = "auto"
    voice_dtype: TorchDType = "auto"
    voice_num_gpus: GpuRequest = "auto"
    voice_num_cpus: float = Field(default=1.0, gt=0)
    voice_max_queued_requests: int = Field(default=defaults.VOICE_MAX_QUEUED_REQUESTS, ge=-1)
    voice_max_ref_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    voice_max_ref_seconds: float = Field(default=60.0, gt=0, le=3600)
    voice_ref_seconds_used: float = Field(default=defaults.VOICE_REF_SECONDS_USED, gt=0, le=20)
    voice_prepared_cache_size: int = Field(
        default=defaults.VOICE_PREPARED_CACHE_SIZE, ge=0, le=10_000
    )
    voice_max_text_chars: int = Field(default=2000, ge=1, le=100_000)
    voice_default_nfe_steps: int = Field(default=defaults.VOICE_NFE_STEPS, ge=1, le=128)
    voice_default_cfg_strength: float = Field(default=defaults.VOICE_CFG_STRENGTH, ge=0, le=10)
    # What one synthesis may cost, estimated from the request (core/voice_cost.py): 422
    # over_budget past it; and the transcript's bytes per second of reference (422 past it)
    voice_max_output_seconds: float = Field(default=defaults.VOICE_MAX_OUTPUT_SECONDS, gt=0)
    voice_max_model_steps: int = Field(default=defaults.VOICE_MAX_MODEL_STEPS, ge=1)
    voice_ref_text_min_bytes_per_second: float = Field(
        default=defaults.VOICE_REF_TEXT_MIN_BYTES_PER_SECOND, ge=0
    )
    voice_ref_text_max_bytes_per_second: float = Field(
        default=defaults.VOICE_REF_TEXT_MAX_BYTES_PER_SECOND, gt=0
    )

    # --- placement and threads ------------------------------------------------------------
    # Deploy GPU deployments on the CPU when the Ray cluster has no GPU at all, instead of
    # leaving them pending forever. Turn off on autoscaling clusters whose GPU nodes start
    # on demand.
    cpu_fallback: bool = True
    torch_cpu_threads: int | None = Field(default=None, ge=1)
    # One tiny request per model replica before it reports ready (see docs/benchmarks.md).
    model_warm_up: bool = True
    # Requests a model replica holds at once: one runs, the others wait inside the replica
    # in arrival order and start the moment the model is free (with 1, a request finding the
    # replica busy backs off in Serve's router, 25 ms doubling to 0.5 s, while the model may
    # idle). The default, 1, is the contract: one request per GPU model replica, the rest in
    # Serve's bounded queue (*_MAX_QUEUED_REQUESTS). Raise it to queue in the replica instead.
    model_max_ongoing_requests: int = Field(default=1, ge=1, le=1024)
    # Who gets the CPU first where models share the cores (core/cpu_priority.py): Unix
    # niceness each replica yields to, 0-19. Ray starts replicas at 15; a higher value yields
    # to the others; unset leaves Ray's. Only ever lowers a priority (docs/benchmarks.md, 2).
    image_cpu_nice: int | None = Field(default=None, ge=0, le=19)
    clip_cpu_nice: int | None = Field(default=None, ge=0, le=19)
    voice_cpu_nice: int | None = Field(default=None, ge=0, le=19)
    gateway_cpu_nice: int | None = Field(default=None, ge=0, le=19)
    # How soon a request that found its model replica busy asks again (Serve's router
    # retries, the wait growing x2 each time up to the max). Serve's own 25 ms doubling to
    # 0.5 s leaves a model idle for up to half a second after it frees; these keep the gap
    # at a few milliseconds for a handful of queue-length probes per second per caller
    # (docs/benchmarks.md, benchmark 1 and 2).
    model_router_initial_backoff_s: float = Field(
        default=defaults.MODEL_ROUTER_INITIAL_BACKOFF_S, gt=0, le=1
    )
    model_router_max_backoff_s: float = Field(
        default=defaults.MODEL_ROUTER_MAX_BACKOFF_S, gt=0, le=10
    )

    # --- gateway --------------------------------------------------------------------------
    request_timeout_seconds: float = Field(default=300.0, gt=0)
    # Request bodies (serve_app/body_limits.py): a JSON body's cap, a multipart upload's total
    # cap (per file: IMAGE_SEARCH_MAX_BYTES, VOICE_MAX_REF_BYTES), and the bytes of bodies one
    # Gateway replica holds at once (past it: 503 with Retry-After).
    gateway_max_json_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    gateway_max_upload_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    gateway_max_body_bytes_in_flight: int = Field(default=512 * 1024 * 1024, ge=1024)
    # Audio decodes (ffmpeg or libsndfile) running at once in one Gateway replica.
    audio_decode_workers: int = Field(default=2, ge=1, le=64)
    # Comma-separated bearer keys and/or a file of keys: one per line, or scoped keys in
    # YAML/JSON (serve_app/api_keys.py). Without any, the server starts only on a loopback
    # address, or with AUTH_DISABLED=1 (serve_app/exposure.py).
    api_keys: SecretStr | None = None
    api_keys_file: Path | None = None
    auth_disabled: bool = False
    # The Ray dashboard link on the console's Status page (serve_app/console); unset: the
    # page's own host on port 8265.
    console_dashboard_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    _api_keys: tuple[ApiKey, ...] = PrivateAttr(default=())

    # --- asynchronous jobs (serve_app/job_runner.py) ----------------------------------------
    # Off by default: it adds a replica and a SQLite file that must live on a lasting disk.
    jobs_enabled: bool = False
    jobs_db_path: Path = Path("app/jobs.db")
    jobs_remote_prefix: str = "AI/JOBS/"  # batch-upload files wait here until their job ends
    jobs_max_queued: int = Field(default=100, ge=1, le=100_000)  # queued + running; 503 past it
    # One API key's share (the keyless server's one user too): 429 past it, so that one
    # client cannot fill the queue for everyone.
    jobs_max_queued_per_key: int = Field(default=50, ge=1, le=100_000)
    jobs_max_attempts: int = Field(default=3, ge=1, le=20)
    jobs_retry_delay_seconds: float = Field(default=5.0, ge=0, le=3600)
    jobs_retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    jobs_webhook_secret: SecretStr | None = None  # HMAC key; webhook_url is refused without it
    jobs_webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    jobs_webhook_backoff_seconds: float = Field(default=2.0, gt=0, le=3600)
    jobs_webhook_allow_private: bool = False  # loopback/private/link-local receivers (SSRF)

    # --- cluster placement ----------------------------------------------------------------
    # A custom Ray resource the model deployments require (e.g. "gpu_node"), so that they
    # land on the nodes that declare it (`ray start --resources '{"gpu_node": 1}'`).
    model_node_resource: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")

    @field_validator(
        "clip_pretrained",
        "openai_base_url",
        "r2_endpoint_url",
        "r2_account_id",
        "storage_public_base_url",
        "api_keys",
        "api_keys_file",
        "voice_vocab",
        "model_node_resource",
        "jobs_webhook_secret",
        "console_dashboard_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_ref_text_rates(self) -> Settings:
        low = self.voice_ref_text_min_bytes_per_second
        high = self.voice_ref_text_max_bytes_per_second
        if low >= high:
            raise ValueError(
                f"VOICE_REF_TEXT_MIN_BYTES_PER_SECOND={low:g} must be below "
                f"VOICE_REF_TEXT_MAX_BYTES_PER_SECOND={high:g}"
            )
        return self

    @field_validator(*_STORE_PREFIXES)
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or not value.endswith("/"):
            raise ValueError("must be a non-empty key prefix ending in '/' (e.g. 'AI/SEARCH/')")
        try:
            validate_prefix(value)
        except InvalidKey as exc:
            raise ValueError(f"is not a valid key prefix: {exc.message}") from None
        return value

    @model_validator(mode="after")
    def _check_prefixes_apart(self) -> Settings:
        # One folder inside another would make the outer one's rules reach the inner one's
        # objects (files served from it, backups listed and pruned under it).
        named = [(name.upper(), getattr(self, name)) for name in _STORE_PREFIXES]
        for name, prefix in named:
            for other, other_prefix in named:
                if name != other and other_prefix.startswith(prefix):
                    raise ValueError(
                        f"{name}={prefix!r} and {other}={other_prefix!r} overlap: the object "
                        "prefixes must be separate folders, none inside another"
                    )
        return self

    @model_validator(mode="after")
    def _check_r2(self) -> Settings:
        if not self.r2_enabled:
            return self
        missing = [
            name
            for name, value in (
                ("R2_ACCESS_KEY_ID", self.r2_access_key_id),
                ("R2_SECRET_ACCESS_KEY", self.r2_secret_access_key),
                ("R2_BUCKET_NAME", self.r2_bucket_name),
            )
            if not value
        ]
        if not self.r2_account_id and not self.r2_endpoint_url:
            missing.append("R2_ACCOUNT_ID (or R2_ENDPOINT_URL)")
        if missing:
            raise ValueError(f"R2_ENABLED=1 needs {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _read_api_keys(self) -> Settings:
        secret = None if self.api_keys is None else self.api_keys.get_secret_value()
        try:
            self._api_keys = configured_keys(secret, self.api_keys_file)
        except KeyFileError as exc:
            raise ValueError(str(exc)) from None
        if self.api_keys is not None and not self._api_keys:
            raise ValueError("API_KEYS holds no key (only commas and spaces)")
        if self.auth_disabled and self._api_keys:
            raise ValueError(
                "AUTH_DISABLED=1 turns authentication off, yet API_KEYS/API_KEYS_FILE give keys: "
                "unset one of them"
            )
        return self

    def api_key_scopes(self) -> tuple[ApiKey, ...]:
        """Every configured API key (API_KEYS and API_KEYS_FILE together), as digests with
        their scopes: the key itself is not kept."""
        return self._api_keys

    @property
    def s3_endpoint_url(self) -> str | None:
        """The S3 endpoint: the explicit override, else R2's endpoint for the account."""
        if self.r2_endpoint_url:
            return self.r2_endpoint_url
        if self.r2_account_id:
            return f"https://{self.r2_account_id}.r2.cloudflarestorage.com"
        return None


def load_settings(
    env_files: str | Path | Sequence[str | Path] | None = ".env",
    overrides: dict[str, object] | None = None,
) -> Settings:
    """Read and validate the settings; raise SettingsError naming each bad variable.

    `env_files` are read in order (later files win, the process environment wins over all);
    `overrides` (keys are variable names, any case) win over everything.
    """
    given = {name.lower(): value for name, value in (overrides or {}).items()}
    unknown = sorted(name.upper() for name in given if name not in Settings.model_fields)
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(unknown)}")
    if env_files is not None and not isinstance(env_files, (str, Path)):
        env_files = tuple(env_files)
    try:
        return Settings(_env_file=env_files, **given)  # type: ignore[call-arg,arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = [str(part) for part in error["loc"]]
            name = location[0].upper() if location else "settings"
            value = error.get("input")
            shown = (
                "" if location == [] or isinstance(value, dict) else f"={_redact(name, value)!r}"
            )
            problems.append(f"{name}{shown}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


def _redact(name: str, value: object) -> object:
    return "***" if any(word in name for word in ("KEY", "SECRET", "TOKEN")) else value
