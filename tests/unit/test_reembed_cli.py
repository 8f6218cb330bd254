"""`python -m serve_app.reembed`: the new model's vectors made ahead of time, with the real
tiny multilingual CLIP and the local object store; the server then only switches."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.records import NewImage
from core.storage.local import LocalObjectStore
from deployments.vector_store.catalog import VectorCatalog
from deployments.vector_store.reembed import Reembedder
from serve_app import reembed

PROJECT = "cli"


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def setup(tmp_path: Path, tiny_models_dir: Path) -> tuple[Path, Path, str]:
    """An old-model catalog of 6 images with their originals, and the new model's settings."""
    storage, db = tmp_path / "storage", tmp_path / "catalog" / "image_search.db"
    store = LocalObjectStore(storage)
    with VectorCatalog(db, dim=8, max_elements=100, model="old-model") as catalog:
        for n in range(6):
            key = f"AI/SEARCH/{PROJECT}/img-{n}.png"
            store.put(key, png(n), "image/png")
            vector = np.random.default_rng(n).standard_normal(8).astype(np.float32)
            catalog.add(
                NewImage(
                    id=f"img-{n}",
                    project_id=PROJECT,
                    object_key=key,
                    filename=f"{n}.png",
                    content_type="image/png",
                    size_bytes=1,
                    width=24,
                    height=24,
                    sha256=f"sha-{n}",
                    vector=vector / np.linalg.norm(vector),
                )
            )
    model = f"local-dir:{tiny_models_dir / 'clip-multilingual'}"
    env = tmp_path / "new-model.env"
    env.write_text(
        "\n".join(
            [
                "IMAGE_ENABLED=false",
                "VOICE_ENABLED=false",
                "R2_ENABLED=false",
                f"LOCAL_STORAGE_DIR={storage}",
                f"IMAGE_SEARCH_DB_PATH={db}",
                f"CLIP_MODEL={model}",
                "CLIP_PRETRAINED=",
                "CLIP_DEVICE=cpu",
                "TORCH_CPU_THREADS=1",
                "IMAGE_SEARCH_REEMBED_BATCH=4",
            ]
        )
        + "\n"
    )
    return env, db, model


def test_the_cli_fills_the_new_vectors_and_the_server_switches_without_embedding(
    setup: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env, db, model = setup
    assert reembed.main(["--env-file", str(env)]) == 0
    out = capsys.readouterr().out
    assert "re-embedding from old-model (8-d) to" in out
    assert "6 of 6 images have vectors of" in out

    def must_not_embed(images: list[bytes]) -> np.ndarray:
        raise AssertionError("the server had nothing left to embed")

    with VectorCatalog(db, dim=32, max_elements=100, model=model) as server:
        assert server.active_space.model == "old-model"  # the CLI never switches
        assert server.reembed_counts() == (6, 6)
        assert Reembedder(server, lambda key: b"", must_not_embed).run()
        assert server.active_space.model == model and server.active_space.dim == 32
        assert server.stats() == {PROJECT: 6}

    assert reembed.main(["--env-file", str(env)]) == 0
    assert "already holds vectors of" in capsys.readouterr().out


def test_an_original_that_is_gone_is_reported_and_left_to_the_server(
    setup: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env, db, _ = setup
    storage = Path(
        next(
            line.split("=", 1)[1]
            for line in env.read_text().splitlines()
            if line.startswith("LOCAL_STORAGE_DIR=")
        )
    )
    LocalObjectStore(storage).delete(f"AI/SEARCH/{PROJECT}/img-2.png")
    assert reembed.main(["--env-file", str(env)]) == 1
    out = capsys.readouterr().out
    assert "5 of 6 images" in out and "1 image(s) could not be embedded" in out
