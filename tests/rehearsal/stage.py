"""What the rehearsal's fixtures set up and its tests use: the stage's constants, the `.env`
a user would write, and the handle on the running pieces."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.rehearsal.ray_head import RayHead, without
from tests.storage_fixtures import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, r2_style_client
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.s3 import RestartableS3

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SERVE_CONFIG = REPO / "serve_config.yaml"
BUCKET = "rehearsal-bucket"
OPENAI_KEY = "sk-rehearsal-0123456789"
# Variables of the Hugging Face libraries that would point them elsewhere than HF_HOME.
HF_VARIABLES = {
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_CACHE",
    "HF_ENDPOINT",
    "HF_TOKEN",
}


@dataclass(frozen=True)
class Rehearsal:
    """What the tests need to reach and inspect the rehearsed server."""

    head: RayHead
    workdir: Path
    logs: Path
    s3: RestartableS3
    bucket: str
    openai: FakeOpenAIServer
    env_file: dict[str, str]

    def s3_client(self) -> Any:
        return r2_style_client(self.s3.endpoint)


def env_file_settings(s3_endpoint: str, openai_base_url: str) -> dict[str, str]:
    """The `.env` a user of the seed would write: the seed's section 6 example with R2 on
    (pointed at the S3 server through R2_ENDPOINT_URL, as for any S3-compatible store) and
    OpenAI pointed at the fake, plus one speed setting a user may lower on a slow machine."""
    from serve_app.settings import Settings

    settings = {
        # seed 6.1
        "IMAGE_ENABLED": "1",
        "IMAGE_SEARCH_ENABLED": "1",
        "VOICE_ENABLED": "1",
        "R2_ENABLED": "1",
        "IMAGE_SEARCH_DB_PATH": "app/image_search.db",
        "IMAGE_SEARCH_DB_BACKUP_ENABLED": "1",
        "IMAGE_SEARCH_DB_BACKUP_INTERVAL_SECONDS": "1800",
        # seed 6.2
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_PROMPT_MODEL": "gpt-4.1",
        "R2_ACCOUNT_ID": "rehearsal-account",
        "R2_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "R2_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        "R2_BUCKET_NAME": BUCKET,
        # seed 6.3
        "IMAGE_REMOTE_PREFIX": '"AI/POSTER/"',
        "IMAGE_SEARCH_REMOTE_PREFIX": '"AI/SEARCH/"',
        "VOICE_REMOTE_PREFIX": '"AI/VOICE/"',
        "IMAGE_SEARCH_MAX_ELEMENTS": "50000",
        "IMAGE_SEARCH_MAX_BYTES": "20971520",
        # where the services are
        "R2_ENDPOINT_URL": s3_endpoint,
        "OPENAI_BASE_URL": openai_base_url,
        # two flow-matching steps instead of 32: the full-size F5-TTS runs on two CPU cores
        "VOICE_DEFAULT_NFE_STEPS": "2",
    }
    if "auth_disabled" in Settings.model_fields:
        # serve_config.yaml listens on 0.0.0.0 and the seed's curls send no key: a user who
        # runs them as written says so (else the server refuses to start without API_KEYS).
        settings["AUTH_DISABLED"] = "1"
    return settings


def cluster_env(hf_home: Path) -> dict[str, str]:
    """The environment of `ray start` (and so of every worker) and of the serve CLI.

    The process environment wins over .env: every setting is kept out of it, so that only the
    file configures the server. HF_HOME points at the hub cache, offline. Ray's CLI is this
    interpreter's, and the code is this checkout's on every worker, whatever the venv's
    editable install points at (a `pip install -e .` in another worktree re-points it there).
    """
    from serve_app.settings import Settings

    env = without(dict(os.environ), set(Settings.model_fields) | HF_VARIABLES)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        RAY_AUTH_MODE="disabled",
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        PYTHONUNBUFFERED="1",
    )
    return env
