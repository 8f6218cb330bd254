"""Object storage for generated images, uploads and DB backups: local directory or S3/R2.

Deployments and the gateway receive a `StorageConfig` (built once from the settings by the app
builder, `serve_app.deploy_configs`) and call `make_object_store(config)`; they never read the
environment themselves. boto3 is imported only when an S3 store is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from core import defaults
from core.storage.base import (
    ObjectInfo,
    ObjectStore,
    guess_content_type,
    join_key,
    validate_key,
    validate_prefix,
)
from core.storage.local import LocalObjectStore

__all__ = [
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "StorageConfig",
    "guess_content_type",
    "join_key",
    "make_object_store",
    "validate_key",
    "validate_prefix",
]


class StorageConfig(BaseModel):
    """Where objects are stored; picklable, so it can be handed to Ray deployments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["local", "s3"] = "local"
    local_dir: Path = Path(defaults.LOCAL_STORAGE_DIR)
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str = defaults.R2_REGION
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    public_base_url: str | None = None
    presign_expires_s: int = Field(default=defaults.PRESIGN_EXPIRES_S, ge=1, le=7 * 24 * 3600)
    timeout_s: float = Field(default=defaults.STORAGE_TIMEOUT_S, gt=0, le=300)

    @model_validator(mode="after")
    def _check_s3(self) -> StorageConfig:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("kind='s3' needs a bucket")
        return self


def make_object_store(config: StorageConfig) -> ObjectStore:
    """Build the configured store. Performs no I/O beyond creating the local directory."""
    if config.kind == "s3":
        from core.storage.s3 import S3ObjectStore  # boto3 only where S3 is used

        assert config.bucket is not None  # enforced by StorageConfig
        secret = config.secret_access_key
        return S3ObjectStore(
            bucket=config.bucket,
            endpoint_url=config.endpoint_url,
            region=config.region,
            access_key_id=config.access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            public_base_url=config.public_base_url,
            presign_expires_s=config.presign_expires_s,
            timeout_s=config.timeout_s,
        )
    return LocalObjectStore(config.local_dir, public_base_url=config.public_base_url)
