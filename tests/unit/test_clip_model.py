"""ClipModel on the tiny offline open_clip model, its builder and the deployment's error mapping."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import ModelInputError, UnreadableImage
from deployments.clip_model import ClipModel
from deployments.configs import ClipEmbedderConfig
from serve_app.tiny import build_tiny_clip
from serve_app.tiny.clip import MODEL_CFG


@pytest.fixture(scope="module")
def clip_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "clip"


@pytest.fixture(scope="module")
def model(clip_dir: Path) -> ClipModel:
    return ClipModel(ClipEmbedderConfig(model=f"local-dir:{clip_dir}", device="cpu"))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _noise(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _stripes(size: tuple[int, int] = (64, 64)) -> Image.Image:
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[:, ::8] = (255, 255, 0)
    array[::5, :, 2] = 200
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """Five distinct images in several formats and sizes."""
    return [
        _encode(Image.new("RGB", (40, 30), (255, 0, 0)), "PNG"),
        _encode(Image.new("RGB", (50, 50), (0, 0, 255)), "JPEG"),
        _encode(_noise(1), "PNG"),
        _encode(_noise(2, (100, 60)), "JPEG"),
        _encode(_stripes(), "WEBP"),
    ]


def _png_header_only(width: int, height: int) -> bytes:
    """A structurally valid PNG whose IHDR claims `width` x `height` (pixel data is tiny)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def _assert_unit_float32(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# --- builder -------------------------------------------------------------------------------


def test_builder_writes_open_clip_local_dir_and_is_idempotent(clip_dir: Path) -> None:
    config = json.loads((clip_dir / "open_clip_config.json").read_text("utf-8"))
    assert config["model_cfg"]["text_cfg"]["vocab_size"] == 49408
    assert config["preprocess_cfg"]["size"] == 32
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in clip_dir.iterdir()}
    assert set(before) == {"open_clip_config.json", "open_clip_model.safetensors"}
    assert build_tiny_clip(clip_dir) == clip_dir
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in clip_dir.iterdir()}
    assert after == before
    assert not [p for p in clip_dir.parent.iterdir() if p.name.startswith(".clip")]
    assert sum(p.stat().st_size for p in clip_dir.iterdir()) < 10 * 2**20


def test_builder_is_deterministic_for_a_seed(tmp_path: Path, clip_dir: Path) -> None:
    again = build_tiny_clip(tmp_path / "clip", seed=0)
    name = "open_clip_model.safetensors"
    assert (again / name).read_bytes() == (clip_dir / name).read_bytes()


# --- loading -------------------------------------------------------------------------------


def test_loads_local_dir_and_bare_directory_alike(
    model: ClipModel, clip_dir: Path, images: list[bytes]
) -> None:
    assert model.dim == MODEL_CFG["embed_dim"]
    info = model.describe()
    assert info["source"] == "local" and info["path"] == str(clip_dir)
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["dim"] == "32"
    assert all(isinstance(v, str) for v in info.values())
    bare = ClipModel(ClipEmbedderConfig(model=str(clip_dir), device="cpu"))
    assert bare.describe()["source"] == "local"
    np.testing.assert_array_equal(bare.embed_images(images), model.embed_images(images))
    np.testing.assert_array_equal(bare.embed_texts(["a cat"]), model.embed_texts(["a cat"]))


def test_local_load_never_touches_the_hub(clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import open_clip.factory
    import open_clip.pretrained

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"hub access attempted: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", no_hub)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", no_hub)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_hub)
    loaded = ClipModel(ClipEmbedderConfig(model=f"local-dir:{clip_dir}", device="cpu"))
    assert loaded.embed_texts(["offline"]).shape == (1, loaded.dim)


def test_model_name_with_checkpoint_file_matches_local_dir(
    model: ClipModel, clip_dir: Path, tmp_path: Path, images: list[bytes]
) -> None:
    """The production path (architecture name + pretrained file) loads the same weights."""
    import open_clip

    (tmp_path / "tiny-clip-test.json").write_text(json.dumps(MODEL_CFG), "utf-8")
    open_clip.add_model_config(tmp_path / "tiny-clip-test.json")
    named = ClipModel(
        ClipEmbedderConfig(
            model="tiny-clip-test",
            pretrained=str(clip_dir / "open_clip_model.safetensors"),
            device="cpu",
        )
    )
    assert named.describe()["source"] == "open_clip"
    np.testing.assert_allclose(named.embed_images(images), model.embed_images(images), atol=1e-6)
    np.testing.assert_allclose(named.embed_texts(["x"]), model.embed_texts(["x"]), atol=1e-6)


def test_missing_paths_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipModel(ClipEmbedderConfig(model=f"local-dir:{tmp_path / 'nope'}", device="cpu"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipModel(ClipEmbedderConfig(model=str(tmp_path / "nope"), device="cpu"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipModel(ClipEmbedderConfig(pretrained=str(tmp_path / "w.safetensors"), device="cpu"))


# --- images --------------------------------------------------------------------------------


def test_image_vectors_are_unit_float32(model: ClipModel, images: list[bytes]) -> None:
    _assert_unit_float32(model.embed_images(images), len(images), model.dim)


def test_batch_equals_single_calls(model: ClipModel, images: list[bytes]) -> None:
    batch = model.embed_images(images)
    singles = np.concatenate([model.embed_images([image]) for image in images])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_same_image_gives_identical_vector(model: ClipModel, images: list[bytes]) -> None:
    first = model.embed_images([images[2]])
    np.testing.assert_array_equal(first, model.embed_images([images[2]]))
    pair = model.embed_images([images[2], images[2]])
    np.testing.assert_array_equal(pair[0], pair[1])


def test_different_images_differ_and_each_is_its_own_nearest_neighbour(
    model: ClipModel, images: list[bytes]
) -> None:
    vectors = model.embed_images(images)
    similarity = vectors @ vectors.T
    off_diagonal = similarity[~np.eye(len(images), dtype=bool)]
    assert off_diagonal.max() < 1.0 - 1e-4
    assert list(similarity.argmax(axis=1)) == list(range(len(images)))
    # A re-encoded query still finds its own image first.
    queries = model.embed_images(images[::-1])
    assert list((queries @ vectors.T).argmax(axis=1)) == list(range(len(images)))[::-1]


def test_small_batch_size_matches_default(
    model: ClipModel, clip_dir: Path, images: list[bytes]
) -> None:
    small = ClipModel(ClipEmbedderConfig(model=str(clip_dir), device="cpu", max_batch_size=2))
    np.testing.assert_allclose(small.embed_images(images), model.embed_images(images), atol=1e-5)
    texts = ["a", "b c", "고양이", "dog", "red"]
    np.testing.assert_allclose(small.embed_texts(texts), model.embed_texts(texts), atol=1e-5)


def test_other_accepted_formats_and_modes(model: ClipModel) -> None:
    gif = _encode(Image.new("P", (20, 20), 3), "GIF")
    bmp = _encode(Image.new("L", (20, 20), 128), "BMP")
    tiff = _encode(Image.new("RGBA", (20, 20), (0, 255, 0, 128)), "TIFF")
    _assert_unit_float32(model.embed_images([gif, bmp, tiff]), 3, model.dim)


def test_empty_image_list(model: ClipModel) -> None:
    _assert_unit_float32(model.embed_images([]), 0, model.dim)


@pytest.mark.parametrize(
    "bad",
    [b"not an image at all", b"", _encode(Image.new("RGB", (8, 8)), "ICO")],
    ids=["garbage", "empty", "unaccepted-format"],
)
def test_undecodable_image_names_its_index(
    model: ClipModel, images: list[bytes], bad: bytes
) -> None:
    with pytest.raises(UnreadableImage, match=r"image 2\b"):
        model.embed_images([images[0], images[1], bad])


def test_truncated_image_names_its_index(model: ClipModel) -> None:
    data = _encode(_noise(3, (200, 200)), "PNG")
    with pytest.raises(UnreadableImage, match=r"image 0\b"):
        model.embed_images([data[: len(data) // 2]])


def test_non_bytes_item_and_single_bytes_are_rejected(
    model: ClipModel, images: list[bytes]
) -> None:
    with pytest.raises(UnreadableImage, match=r"image 1\b"):
        model.embed_images([images[0], "a string"])  # type: ignore[list-item]
    with pytest.raises(UnreadableImage, match="list"):
        model.embed_images(images[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("side", [50_000, 7_000], ids=["pillow-bomb-limit", "config-limit"])
def test_huge_header_is_rejected_before_decoding(model: ClipModel, side: int) -> None:
    """50000^2 trips Pillow's own bomb guard; 7000^2 = 49 M only the configured 40 M cap."""
    with pytest.raises(UnreadableImage, match=r"image 0\b.*pixels"):
        model.embed_images([_png_header_only(side, side)])


def test_low_pixel_cap_rejects_a_real_image(clip_dir: Path) -> None:
    capped = ClipModel(ClipEmbedderConfig(model=str(clip_dir), device="cpu", max_image_pixels=100))
    small = _encode(Image.new("RGB", (10, 10), (1, 2, 3)), "PNG")
    _assert_unit_float32(capped.embed_images([small]), 1, capped.dim)
    with pytest.raises(UnreadableImage, match=r"image 1 is 11x10 = 110 pixels"):
        capped.embed_images([small, _encode(Image.new("RGB", (11, 10)), "PNG")])


# --- texts ---------------------------------------------------------------------------------


def test_texts_are_unit_float32_including_korean(model: ClipModel) -> None:
    texts = ["a photo of a cat", "고양이 사진", "a photo of a cat"]
    vectors = model.embed_texts(texts)
    _assert_unit_float32(vectors, 3, model.dim)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert float(vectors[0] @ vectors[1]) < 1.0 - 1e-4
    long_text = " ".join(["word"] * 500)  # longer than the context: truncated, not an error
    _assert_unit_float32(model.embed_texts([long_text]), 1, model.dim)


def test_empty_text_list(model: ClipModel) -> None:
    _assert_unit_float32(model.embed_texts([]), 0, model.dim)


@pytest.mark.parametrize("bad", ["", "   \n\t"])
def test_empty_text_names_its_index(model: ClipModel, bad: str) -> None:
    with pytest.raises(ModelInputError, match=r"text 1 is empty"):
        model.embed_texts(["ok", bad])


def test_single_string_is_rejected(model: ClipModel) -> None:
    with pytest.raises(ModelInputError, match="list"):
        model.embed_texts("a cat")  # type: ignore[arg-type]


# --- deployment shell (its class body, without starting Ray) -------------------------------


def test_deployment_maps_errors(clip_dir: Path, images: list[bytes]) -> None:
    from core.errors import InvalidInput, UnsupportedMediaType
    from deployments.clip_embedder import ClipEmbedder

    embedder = ClipEmbedder.func_or_class(ClipEmbedderConfig(model=str(clip_dir), device="cpu"))
    # the model methods are coroutines (they wait their turn in the replica's ModelQueue)
    assert asyncio.run(embedder.embed_images(images[:2])).shape == (2, 32)
    assert asyncio.run(embedder.embed_text(["a"])).shape == (1, 32)
    assert embedder.describe()["dim"] == "32"
    with pytest.raises(UnsupportedMediaType, match="image 0") as excinfo:
        asyncio.run(embedder.embed_images([b"junk"]))
    assert excinfo.value.status_code == 415
    with pytest.raises(InvalidInput, match="text 0") as excinfo2:
        asyncio.run(embedder.embed_text([" "]))
    assert excinfo2.value.status_code == 422
