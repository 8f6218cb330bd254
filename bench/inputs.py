"""What the benchmarks feed the models: the tiny models of the offline profile, a reference
voice clip, distinct JPEGs, and random unit vectors stored as the images of a project.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from core.records import NewImage


def build_models(root: Path) -> Path:
    """The tiny local models of the offline profile, built into `root` (idempotent)."""
    from serve_app.tiny import build_tiny_models

    build_tiny_models(root)
    return root


def clip_dim(models: Path) -> int:
    """The embedding size of the tiny CLIP under `models`."""
    config = json.loads((models / "clip" / "open_clip_config.json").read_text())
    return int(config["model_cfg"]["embed_dim"])


def reference_wav(seconds: float = 3.0, sr: int = 24_000) -> bytes:
    """A voiced-sounding reference clip (a modulated tone with pauses), as WAV bytes."""
    import soundfile as sf

    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t)
    envelope = (np.sin(2 * np.pi * 2.5 * t) > -0.6).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, (tone * envelope).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def random_images(count: int, seed: int, size: int = 192) -> list[bytes]:
    """`count` distinct JPEGs (smooth colour fields plus noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(count):
        a, b, c = rng.random(3)
        base = np.stack([xx * a, yy * b, (xx + yy) * c / 2], axis=-1) * 200
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


class AddsImages(Protocol):
    """A `VectorCatalog`, or anything with its `add_many` (a VectorIndex handle's wrapper)."""

    def add_many(self, images: list[NewImage], /) -> object: ...


def fill_catalog(catalog: AddsImages, project: str, count: int, dim: int, seed: int = 7) -> None:
    """`count` random unit vectors as images of `project` (search cost, not content, matters)."""
    if count > 0:
        catalog.add_many(fill_images(project, count, dim, seed))


def fill_images(project: str, count: int, dim: int, seed: int = 7) -> list[NewImage]:
    """What `fill_catalog` adds: `count` random unit vectors as images of `project`."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [new_image(project, i, vectors[i]) for i in range(count)]


def fill_graph(app: str, project: str, count: int, dim: int) -> None:
    """What `fill_catalog` adds, into the VectorIndex of our Serve app `app` through a handle
    (from a process connected to that app's Ray).

    The handle is one of its own (not Serve's cached one), awaited in an event loop of its
    own and shut down before that loop closes: on Serve's fast path a handle's router runs on
    the loop of its first call (a blocking `.result()` outside one fails), and a cached handle
    would be shut down by `serve.shutdown()` on the closed loop.
    """
    import asyncio

    from ray.serve.handle import DeploymentHandle

    if count <= 0:
        return
    images = fill_images(project, count, dim)

    async def add() -> None:
        handle: DeploymentHandle[Any] = DeploymentHandle("VectorIndex", app_name=app)
        try:
            await handle.add_many.remote(images)
        finally:
            await handle.shutdown_async()

    asyncio.run(add())


def new_image(project: str, i: int, vector: Any) -> NewImage:
    """The `i`-th benchmark image of `project`, with `vector` as its embedding."""
    from core.records import NewImage

    return NewImage(
        id=f"bench-{project}-{i:06d}",
        project_id=project,
        object_key=f"AI/SEARCH/{project}/bench-{project}-{i:06d}.jpg",
        filename=f"{i}.jpg",
        content_type="image/jpeg",
        size_bytes=1,
        width=1,
        height=1,
        sha256=f"{i:064x}",
        vector=vector,
    )


def add_numbered(catalog: AddsImages, project: str, vectors: Any, batch: int = 1000) -> None:
    """Add `vectors` as images `00000000`, `00000001`, ... of `project`, `batch` rows per
    transaction: a hit's id is its row number in `vectors` (the index benchmarks' ground truth)."""
    from core.records import NewImage

    for start in range(0, len(vectors), batch):
        catalog.add_many(
            [
                NewImage(
                    id=f"{i:08d}",
                    project_id=project,
                    object_key=f"bench/{i:08d}.png",
                    filename=f"{i}.png",
                    content_type="image/png",
                    size_bytes=1,
                    width=1,
                    height=1,
                    sha256=f"{i:064x}",
                    vector=vectors[i],
                )
                for i in range(start, min(start + batch, len(vectors)))
            ]
        )
