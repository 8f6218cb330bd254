"""The default of every value that both the settings (`serve_app.settings`) and the typed
configs (`deployments.configs`, `core.types`, `core.storage`) carry: defined once, here.

The settings are what operators change (environment variables); a config built without the
settings (a test, another Ray app binding a deployment itself) gets the same values.
"""

from __future__ import annotations

from typing import Final

# --- prompt step (OpenAI-compatible chat model) -------------------------------------------
OPENAI_PROMPT_MODEL: Final = "gpt-4.1"
OPENAI_TIMEOUT_S: Final = 20.0
OPENAI_MAX_RETRIES: Final = 2

# --- image generation ---------------------------------------------------------------------
IMAGE_MODEL: Final = "stabilityai/sd-turbo"
IMAGE_WIDTH: Final = 512
IMAGE_HEIGHT: Final = 512
IMAGE_STEPS: Final = 1
IMAGE_GUIDANCE_SCALE: Final = 0.0
IMAGE_MAX_QUEUED_REQUESTS: Final = 8
# n x steps x width x height of one request: one 1024x1024 image at 100 steps
IMAGE_MAX_PIXEL_STEPS: Final = 100 * 1024 * 1024

# --- image search -------------------------------------------------------------------------
# Multilingual (Korean first): chosen from published retrieval numbers in docs/search-models.md.
CLIP_MODEL: Final = "xlm-roberta-base-ViT-B-32"
CLIP_PRETRAINED: Final = "laion5b_s13b_b90k"
# The model that made the vectors of catalogs from before schema 2, which did not record it:
# what every release until then shipped as CLIP_MODEL / CLIP_PRETRAINED.
IMAGE_SEARCH_LEGACY_MODEL: Final = "ViT-B-32"
IMAGE_SEARCH_LEGACY_PRETRAINED: Final = "laion2b_s34b_b79k"
# Re-embedding after a model change: images per CLIP request, and how long to wait before
# trying an image whose original could not be read (the store failing) again.
IMAGE_SEARCH_REEMBED_BATCH: Final = 32
IMAGE_SEARCH_REEMBED_RETRY_S: Final = 30.0
# While searches or uploads came within this many seconds, re-embedding sends this many images
# per CLIP request instead: a search waits behind at most one such batch.
IMAGE_SEARCH_REEMBED_BUSY_BATCH: Final = 4
IMAGE_SEARCH_REEMBED_BUSY_WINDOW_S: Final = 10.0
CLIP_MAX_BATCH_SIZE: Final = 32
CLIP_MAX_QUEUED_REQUESTS: Final = 16
EMBEDDINGS_MAX_TOTAL_CHARS: Final = 65_536  # all inputs of one /v1/embeddings request
IMAGE_SEARCH_MAX_PIXELS: Final = 40_000_000
HNSW_M: Final = 32
HNSW_EF_CONSTRUCTION: Final = 200
HNSW_EF_SEARCH: Final = 128  # recall@10 0.998 on CLIP-like vectors (docs/benchmarks.md §3)
DB_BACKUP_INTERVAL_S: Final = 1800
DB_BACKUP_PREFIX: Final = "backups/image_search/"
IMAGE_SEARCH_REMOTE_PREFIX: Final = "AI/SEARCH/"
DB_BACKUP_KEEP: Final = 10

# --- voice cloning ------------------------------------------------------------------------
VOICE_MODEL_CONFIG: Final = "F5TTS_v1_Base"
VOICE_CHECKPOINT: Final = "hf://SWivid/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors"
VOICE_VOCODER: Final = "charactr/vocos-mel-24khz"
VOICE_ASR_MODEL: Final = "openai/whisper-large-v3-turbo"
VOICE_REF_SECONDS_USED: Final = 12.0
# Prepared saved voices a VoiceCloner replica keeps in memory (about 1.2 MB each at most)
VOICE_PREPARED_CACHE_SIZE: Final = 64
VOICE_NFE_STEPS: Final = 32
VOICE_CFG_STRENGTH: Final = 2.0
VOICE_MAX_QUEUED_REQUESTS: Final = 8
# What one synthesis may cost (core/voice_cost.py): seconds of output, transformer
# passes (chunks x nfe_steps x 2), and the transcript's plausible speaking rates.
VOICE_MAX_OUTPUT_SECONDS: Final = 600.0
VOICE_MAX_MODEL_STEPS: Final = 8192
VOICE_REF_TEXT_MIN_BYTES_PER_SECOND: Final = 1.0
VOICE_REF_TEXT_MAX_BYTES_PER_SECOND: Final = 60.0

# --- serving ------------------------------------------------------------------------------
# Serve's router retry for a request whose model replica is busy (serve_app/settings.py).
MODEL_ROUTER_INITIAL_BACKOFF_S: Final = 0.002
MODEL_ROUTER_MAX_BACKOFF_S: Final = 0.02

# --- object storage -----------------------------------------------------------------------
LOCAL_STORAGE_DIR: Final = "data/storage"
R2_REGION: Final = "auto"
PRESIGN_EXPIRES_S: Final = 3600
STORAGE_TIMEOUT_S: Final = 10.0
