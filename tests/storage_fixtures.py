"""Pytest fixtures for object storage: moto's S3 server on loopback, buckets and stores.

Imported by tests/conftest.py. Credentials are dummies passed to the clients directly; the
process environment is never touched.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from core.storage import LocalObjectStore
from core.storage.s3 import S3ObjectStore

__all__ = [
    "DUMMY_ACCESS_KEY_ID",
    "DUMMY_SECRET_ACCESS_KEY",
    "local_store",
    "moto_server",
    "r2_style_client",
    "s3_admin_client",
    "s3_bucket",
    "s3_store",
]

DUMMY_ACCESS_KEY_ID = "testing-access-key"
DUMMY_SECRET_ACCESS_KEY = "testing-secret-do-not-leak-0123456789"
S3_REGION = "auto"  # what Cloudflare R2 uses


def r2_style_client(endpoint_url: str) -> Any:  # an S3Client; no boto3 stubs installed
    """A boto3 S3 client configured like one talking to R2: region "auto", SigV4, path style."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=S3_REGION,
        aws_access_key_id=DUMMY_ACCESS_KEY_ID,
        aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port picked by the OS); yields its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_admin_client(moto_server: str) -> Any:
    """An R2-style boto3 client on the moto server, for arranging and inspecting buckets."""
    return r2_style_client(moto_server)


@pytest.fixture
def s3_bucket(s3_admin_client: Any) -> Iterator[str]:
    """A fresh, uniquely named bucket on the moto server; emptied and removed afterwards."""
    client = s3_admin_client
    name = f"test-{uuid.uuid4().hex[:16]}"
    # With region "auto" moto (like R2) wants the location constraint spelled out.
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": S3_REGION})
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):  # cleanup must not mask the test's outcome
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for item in page.get("Contents", ()):
                    client.delete_object(Bucket=name, Key=item["Key"])
            client.delete_bucket(Bucket=name)


@pytest.fixture
def s3_store(moto_server: str, s3_bucket: str) -> S3ObjectStore:
    """An `S3ObjectStore` on a fresh moto bucket, with dummy credentials and presigned URLs."""
    return S3ObjectStore(
        bucket=s3_bucket,
        endpoint_url=moto_server,
        region=S3_REGION,
        access_key_id=DUMMY_ACCESS_KEY_ID,
        secret_access_key=DUMMY_SECRET_ACCESS_KEY,
        timeout_s=5.0,
    )


@pytest.fixture
def local_store(tmp_path: Path) -> LocalObjectStore:
    """A `LocalObjectStore` rooted in a fresh temporary directory (`<tmp>/objects`)."""
    return LocalObjectStore(tmp_path / "objects")
