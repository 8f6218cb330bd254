"""How the benchmarks configure our application: the settings of a benchmark app (the
offline profile's tiny models on the CPU, storage under a scratch directory) and the
environment of a Ray on Serve's fast path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.env import REPO
from bench.machine import free_port

FAST_PATH_ENV_FILE = REPO / "configs" / "fast-path.env"


def fast_path_env(scratch: Path) -> dict[str, str]:
    """Environment of a Ray on Serve's fast path (configs/fast-path.env), with HAProxy's
    ports and files of its own so it cannot meet another Ray's HAProxy on this machine.
    Keep `scratch` short: HAProxy refuses a stats socket path over 97 characters, and Ray
    puts the socket two levels below it."""
    from dotenv import dotenv_values

    scratch.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in dotenv_values(FAST_PATH_ENV_FILE).items() if v is not None}
    env.update(
        {
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(scratch / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(scratch / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(scratch),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(scratch / "server-state"),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",  # a quick stop at the end
        }
    )
    return env


def offline_settings(models: Path, work: Path, **extra: Any) -> dict[str, Any]:
    """Settings of a benchmark app: the offline profile's tiny models on the CPU, local
    storage and database under `work`, no backups, no OpenAI (template prompts)."""
    from serve_app.tiny import model_settings

    return {
        **model_settings(models),
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "VOICE_ENABLED": False,
        "R2_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(work / "storage"),
        "IMAGE_SEARCH_DB_PATH": str(work / "image_search.db"),
        "IMAGE_SEARCH_DB_BACKUP_ENABLED": False,
        "IMAGE_DEVICE": "cpu",
        "IMAGE_NUM_GPUS": 0,
        "IMAGE_NUM_CPUS": 0.5,
        "IMAGE_DEFAULT_WIDTH": 64,
        "IMAGE_DEFAULT_HEIGHT": 64,
        "IMAGE_DEFAULT_STEPS": 2,
        "IMAGE_MAX_QUEUED_REQUESTS": 64,
        "CLIP_DEVICE": "cpu",
        "CLIP_NUM_GPUS": 0,
        "CLIP_NUM_CPUS": 0.5,
        "CLIP_MAX_QUEUED_REQUESTS": 128,
        "IMAGE_SEARCH_MAX_ELEMENTS": 50_000,
        "IMAGE_SEARCH_MAX_BATCH_FILES": 32,
        "VOICE_DEVICE": "cpu",
        "VOICE_NUM_GPUS": 0,
        "VOICE_NUM_CPUS": 0.5,
        "VOICE_DEFAULT_NFE_STEPS": 8,
        "VOICE_MAX_QUEUED_REQUESTS": 64,
        "TORCH_CPU_THREADS": 1,
        **extra,
    }
