"""`GET /v1/models` and images among `/v1/embeddings` inputs, without Ray.

The pure parts (model ids, data URLs) directly; the routes over HTTP through the Gateway's own
FastAPI app (`create_http_app`), with stand-in deployment handles that describe a model and
embed deterministically, and a module board whose not-ready modules are chosen per test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.errors import ApiError, InvalidInput, ModelNotReady, PayloadTooLarge, UnsupportedMediaType
from core.storage import LocalObjectStore
from serve_app.api_keys import ApiKey, digest
from serve_app.deploy_configs import gateway_config
from serve_app.embedding_inputs import check_image_input, decode_image, parse_data_url
from serve_app.http_app import create_http_app
from serve_app.served_models import (
    CLIP_MODEL,
    IMAGE_MODEL,
    OWNER,
    VOICE_MODEL,
    model_id,
    served_model,
)
from serve_app.services import Services
from serve_app.settings import load_settings

DIM = 8
MAX_BYTES = 8 * 1024
MAX_PIXELS = 1_000_000
MAX_IMAGES = 3


def png(size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


# --- model ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "local", "expected"),
    [
        ("stabilityai/sd-turbo", False, "stabilityai/sd-turbo"),
        ("stabilityai/sd-turbo", None, "stabilityai/sd-turbo"),
        ("ViT-B-32", None, "ViT-B-32"),
        (
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            None,
            "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        ),
        ("local-dir:/srv/models/clip", None, "clip"),
        ("/tmp/pytest-7/tiny_models0/diffusion", True, "diffusion"),
        ("models/diffusion/", True, "diffusion"),
        (".models/diffusion", True, "diffusion"),
        ("F5TTS_v1_Base", None, "F5TTS_v1_Base"),
        ("/srv/voices/custom_f5.yaml", None, "custom_f5"),
        ("configs/f5.yml", None, "f5"),
        ("/tmp/tiny/f5tts/model.yaml", None, "f5tts"),
    ],
)
def test_model_ids_are_the_reference_without_server_paths(
    reference: str, local: bool | None, expected: str
) -> None:
    assert model_id(reference, local=local) == expected


def test_served_models_from_each_modules_description() -> None:
    image = served_model(
        IMAGE_MODEL, {"model": "stabilityai/sd-turbo", "source": "hub", "device": "cuda"}, 100
    )
    assert (image.id, image.owned_by, image.module) == (
        "stabilityai/sd-turbo",
        "stabilityai",
        "image",
    )
    assert image.endpoints == ("/v1/images/generations",) and image.dimensions is None
    clip = served_model(
        CLIP_MODEL, {"model": "local-dir:/m/clip", "source": "local", "dim": "512"}, 100
    )
    assert (clip.id, clip.owned_by, clip.dimensions) == ("clip", OWNER, 512)
    builtin = served_model(
        CLIP_MODEL, {"model": "ViT-B-32", "source": "open_clip", "dim": "512"}, 1
    )
    assert (builtin.id, builtin.owned_by) == ("ViT-B-32", OWNER)
    voice = served_model(VOICE_MODEL, {"model_config": "F5TTS_v1_Base", "checkpoint": "x"}, 1)
    assert (voice.id, voice.module, voice.endpoints) == (
        "F5TTS_v1_Base",
        "voice",
        ("/v1/audio/speech",),
    )
    with pytest.raises(ValueError, match="voice"):
        served_model(VOICE_MODEL, {"model": "oops"}, 1)


# --- data URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("data:image/png;base64,AAAA", ("image/png", True, "AAAA")),
        ("DATA:Image/JPEG;BASE64,AAAA", ("image/jpeg", True, "AAAA")),
        ("data:;base64,AAAA", ("", True, "AAAA")),
        ("data:image/webp;name=x.webp;base64,AA", ("image/webp", True, "AA")),
        ("data:image/png,%89PNG", ("image/png", False, "%89PNG")),
        ("data:text/plain,hello", ("text/plain", False, "hello")),
        ("data: the new oil, they say", None),
        ("data:,hello", None),
        ("a photo of data:image/png;base64,AAAA", None),
        ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk", None),
    ],
)
def test_which_strings_are_data_urls(value: str, parsed: tuple[str, bool, str] | None) -> None:
    result = parse_data_url(value)
    if parsed is None:
        assert result is None
    else:
        assert result is not None
        assert (result.media_type, result.base64, result.payload) == parsed


def test_image_bytes_from_the_accepted_encodings() -> None:
    image = png()
    encoded = base64.b64encode(image).decode("ascii")
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    urlsafe = base64.urlsafe_b64encode(image).decode("ascii").rstrip("=")
    percent = "".join(f"%{byte:02X}" for byte in image)
    for url in (
        data_url(image),
        f"data:image/png;base64,{wrapped}",
        f"data:image/png;base64,{urlsafe}",
        f"data:image/png,{percent}",
        encoded,  # bare base64: only from the object form
    ):
        assert decode_image(url, index=0, max_bytes=MAX_BYTES) == image


@pytest.mark.parametrize(
    ("url", "error", "words"),
    [
        ("https://example.com/cat.png", InvalidInput, "remote image URLs are not fetched"),
        ("file:///etc/passwd", InvalidInput, "remote image URLs are not fetched"),
        ("data:image/png;charset", InvalidInput, "not a valid data URL"),
        ("data:image/png;base64,@@@@", InvalidInput, "not valid base64"),
        ("not base64 at all!", InvalidInput, "not valid base64"),
        ("data:text/plain;base64,aGVsbG8=", UnsupportedMediaType, "text/plain, not an image"),
        (
            "data:image/png;base64," + "A" * (MAX_BYTES * 2),
            PayloadTooLarge,
            "IMAGE_SEARCH_MAX_BYTES",
        ),
    ],
)
def test_bad_image_urls_are_refused_naming_the_input(
    url: str, error: type[ApiError], words: str
) -> None:
    with pytest.raises(error) as caught:
        decode_image(url, index=2, max_bytes=MAX_BYTES)
    assert words in caught.value.message and "input.2" in caught.value.message
    assert caught.value.details["fields"][0]["field"] == "input.2"


def test_a_payload_over_the_cap_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("decoded")

    monkeypatch.setattr(base64, "b64decode", no_decoding)
    with pytest.raises(PayloadTooLarge, match="at least"):
        decode_image(data_url(b"x" * (MAX_BYTES + 10)), index=0, max_bytes=MAX_BYTES)


def test_decoded_bytes_are_checked_as_an_upload_naming_the_input() -> None:
    checked = check_image_input(png(), index=0, max_pixels=MAX_PIXELS)
    assert (checked.content_type, checked.width) == ("image/png", 32)
    with pytest.raises(UnsupportedMediaType) as caught:
        check_image_input(b"GIF89a not really", index=4, max_pixels=MAX_PIXELS)
    assert "'input.4'" in caught.value.message
    assert caught.value.details["fields"] == [
        {"field": "input.4", "message": "not an acceptable image"}
    ]
    with pytest.raises(PayloadTooLarge, match="IMAGE_SEARCH_MAX_PIXELS"):
        check_image_input(png((1100, 1000)), index=0, max_pixels=MAX_PIXELS)


# --- the routes, over HTTP without Ray --------------------------------------------------------


class Response:
    """What `handle.method.remote()` gives: awaitable once, cancellable."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def __await__(self) -> Any:
        async def answer() -> Any:
            await asyncio.sleep(0)
            if isinstance(self._value, BaseException):
                raise self._value
            return self._value

        return answer().__await__()

    def cancel(self) -> None:
        pass


class Method:
    def __init__(self, handle: FakeHandle, name: str) -> None:
        self._handle, self._name = handle, name

    def remote(self, *args: Any) -> Response:
        self._handle.calls.append((self._name, args))
        return Response(getattr(self._handle, f"do_{self._name}")(*args))


class FakeHandle:
    """A deployment handle whose describe() answers `description`, and a CLIP stand-in."""

    def __init__(self, description: dict[str, str]) -> None:
        self.description = description
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Method:
        if name.startswith(("do_", "_")):
            raise AttributeError(name)
        return Method(self, name)

    def do_describe(self) -> dict[str, str]:
        return dict(self.description)

    def do_embed_text(self, texts: list[str], space: Any = None) -> np.ndarray:
        return np.stack([vector(b"text:" + text.encode()) for text in texts])

    def do_embed_images(self, images: list[bytes], space: Any = None) -> np.ndarray:
        return np.stack([vector(b"image:" + image) for image in images])

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args in self.calls if called == name]


def vector(seed: bytes) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(hashlib.sha256(seed).digest()))
    values = rng.standard_normal(DIM).astype(np.float32)
    return values / np.linalg.norm(values)


class Board:
    """Every module ready except those in `not_ready`."""

    def __init__(self) -> None:
        self.not_ready: set[str] = set()

    async def require_ready(self, spec: Any) -> None:
        if spec.name in self.not_ready:
            raise ModelNotReady(f"the {spec.name} module is loading", module=spec.name)

    async def watch(self, spec: Any, poll_s: float = 1.0) -> None:
        await asyncio.Event().wait()


class Gateway:
    def __init__(self, client: TestClient, board: Board, handles: dict[str, FakeHandle]) -> None:
        self.client, self.board, self.handles = client, board, handles

    def embed(self, *inputs: Any, **extra: Any) -> Any:
        return self.client.post("/v1/embeddings", json={"input": list(inputs), **extra})


KEYS = {"everything": "k-everything-0123456789", "images-only": "k-images-only-0123456789"}


@contextmanager
def make_gateway(
    tmp_path: Path, api_keys: tuple[ApiKey, ...] = (), **overrides: Any
) -> Iterator[Gateway]:
    settings = load_settings(
        None,
        {
            "LOCAL_STORAGE_DIR": str(tmp_path),
            "IMAGE_SEARCH_MAX_BYTES": MAX_BYTES,
            "IMAGE_SEARCH_MAX_PIXELS": MAX_PIXELS,
            "IMAGE_SEARCH_MAX_BATCH_FILES": MAX_IMAGES,
            **overrides,
        },
    )
    config = gateway_config(settings).model_copy(update={"api_keys": api_keys})
    handles = {
        "image_generator": FakeHandle({"model": "stabilityai/sd-turbo", "source": "hub"}),
        "clip_embedder": FakeHandle({"model": "ViT-B-32", "source": "open_clip", "dim": str(DIM)}),
        "voice_cloner": FakeHandle({"model_config": "F5TTS_v1_Base", "checkpoint": "hf://x/y/z"}),
    }
    board = Board()
    services = Services(
        config=config,
        store=LocalObjectStore(tmp_path),
        board=board,  # type: ignore[arg-type]
        **handles,
    )
    with TestClient(create_http_app(services)) as client:
        yield Gateway(client, board, handles)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with make_gateway(tmp_path) as gateway:
        yield gateway


def test_models_list_in_openais_shape(gateway: Gateway) -> None:
    response = gateway.client.get("/v1/models")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == [
        "stabilityai/sd-turbo",
        "ViT-B-32",
        "F5TTS_v1_Base",
    ]
    image, clip, voice = body["data"]
    assert image["object"] == "model" and isinstance(image["created"], int)
    assert (image["owned_by"], image["module"]) == ("stabilityai", "image")
    assert image["endpoints"] == ["/v1/images/generations"] and "dimensions" not in image
    assert (clip["module"], clip["dimensions"], clip["owned_by"]) == ("image_search", DIM, OWNER)
    assert voice["endpoints"] == ["/v1/audio/speech"]
    # Each model is described once per Gateway replica, not once per listing.
    gateway.client.get("/v1/models")
    assert all(len(handle.called("describe")) == 1 for handle in gateway.handles.values())


def test_a_model_id_with_a_slash_is_retrieved(gateway: Gateway) -> None:
    for path in ("stabilityai/sd-turbo", "stabilityai%2Fsd-turbo"):  # the openai client: %2F
        response = gateway.client.get(f"/v1/models/{path}")
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "stabilityai/sd-turbo"
    assert gateway.client.get("/v1/models/ViT-B-32").json()["module"] == "image_search"


@pytest.mark.parametrize("unknown", ["gpt-4o", "stabilityai/sd-turbo/extra", "stabilityai", ""])
def test_an_unknown_model_is_404_in_the_error_shape(gateway: Gateway, unknown: str) -> None:
    response = gateway.client.get(f"/v1/models/{unknown}")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["model"] == unknown
    assert error["available"] == ["stabilityai/sd-turbo", "ViT-B-32", "F5TTS_v1_Base"]


def test_a_module_not_ready_is_not_listed_until_it_is(gateway: Gateway) -> None:
    gateway.board.not_ready = {"voice"}
    ids = [model["id"] for model in gateway.client.get("/v1/models").json()["data"]]
    assert ids == ["stabilityai/sd-turbo", "ViT-B-32"]
    missing = gateway.client.get("/v1/models/F5TTS_v1_Base")
    assert missing.status_code == 404 and "voice" in missing.json()["error"]["message"]
    gateway.board.not_ready = set()
    assert gateway.client.get("/v1/models/F5TTS_v1_Base").status_code == 200


def test_a_disabled_modules_models_are_not_listed(tmp_path: Path) -> None:
    with make_gateway(tmp_path, VOICE_ENABLED=False, IMAGE_ENABLED=False) as gateway:
        ids = [model["id"] for model in gateway.client.get("/v1/models").json()["data"]]
        assert ids == ["ViT-B-32"]
        assert gateway.client.get("/v1/models/F5TTS_v1_Base").status_code == 404
        assert not gateway.handles["voice_cloner"].calls


def test_a_key_sees_the_models_of_its_modules(tmp_path: Path) -> None:
    keys = (
        ApiKey(name="everything", digest=digest(KEYS["everything"])),
        ApiKey(name="images-only", digest=digest(KEYS["images-only"]), modules=("image",)),
    )
    with make_gateway(tmp_path, api_keys=keys) as gateway:
        assert gateway.client.get("/v1/models").status_code == 401

        def ids(key: str) -> list[str]:
            response = gateway.client.get(
                "/v1/models", headers={"Authorization": f"Bearer {KEYS[key]}"}
            )
            assert response.status_code == 200, response.text
            return [model["id"] for model in response.json()["data"]]

        assert ids("everything") == ["stabilityai/sd-turbo", "ViT-B-32", "F5TTS_v1_Base"]
        assert ids("images-only") == ["stabilityai/sd-turbo"]
        hidden = gateway.client.get(
            "/v1/models/ViT-B-32", headers={"Authorization": f"Bearer {KEYS['images-only']}"}
        )
        assert hidden.status_code == 404


def test_mixed_texts_and_images_keep_their_order(gateway: Gateway) -> None:
    red, blue = png(color=(200, 0, 0)), png(color=(0, 0, 200))
    response = gateway.embed(
        "a red square",
        data_url(red),
        {"type": "image_url", "image_url": {"url": data_url(blue)}},
        {"type": "text", "text": "a blue square"},
        {"type": "image_url", "image_url": base64.b64encode(red).decode("ascii")},
        encoding_format="float",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body["data"]] == [0, 1, 2, 3, 4]
    got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    expected = [
        vector(b"text:a red square"),
        vector(b"image:" + red),
        vector(b"image:" + blue),
        vector(b"text:a blue square"),
        vector(b"image:" + red),
    ]
    assert np.allclose(got, np.stack(expected), atol=1e-6)
    assert body["model"] == "ViT-B-32"  # no model asked: the listed id
    assert body["usage"]["prompt_tokens"] == 6  # the texts' words; images count none
    clip = gateway.handles["clip_embedder"]
    # one request per tower, in the configured model's space (named: see Services._call_clip)
    assert [args[0] for args in clip.called("embed_text")] == [["a red square", "a blue square"]]
    assert [args[0] for args in clip.called("embed_images")] == [[red, blue, red]]


def test_images_alone_do_not_call_the_text_tower(gateway: Gateway) -> None:
    response = gateway.embed(data_url(png()), model="clip", encoding_format="base64")
    assert response.status_code == 200, response.text
    packed = response.json()["data"][0]["embedding"]
    unpacked = np.frombuffer(base64.b64decode(packed), dtype="<f4")
    assert np.allclose(unpacked, vector(b"image:" + png()), atol=1e-6)
    assert not gateway.handles["clip_embedder"].called("embed_text")


def bomb_png() -> bytes:
    """A few kilobytes that decode to 2 million pixels (over MAX_PIXELS)."""
    buffer = io.BytesIO()
    Image.new("L", (2000, 1000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < MAX_BYTES
    return buffer.getvalue()


def tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("item", "status", "code"),
    [
        (lambda: data_url(b"hello, not an image"), 415, "unsupported_media_type"),
        (lambda: data_url(tiff(), "image/tiff"), 415, "unsupported_media_type"),
        (lambda: data_url(png() + b"PK\x03\x04 hidden zip"), 415, "unsupported_media_type"),
        (lambda: data_url(b"GIF89a", "text/plain"), 415, "unsupported_media_type"),
        (lambda: data_url(bomb_png()), 413, "payload_too_large"),
        (lambda: data_url(noise_png(64)), 413, "payload_too_large"),
        (lambda: "data:image/png;base64,%%%", 422, "invalid_request"),
        (
            lambda: {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            422,
            "invalid_request",
        ),
        (lambda: {"type": "image_url", "image_url": {}}, 422, "invalid_request"),
        (lambda: {"type": "audio", "audio": "x"}, 422, "invalid_request"),
    ],
)
def test_a_bad_image_is_refused_before_any_model_call(
    gateway: Gateway, item: Any, status: int, code: str
) -> None:
    response = gateway.embed("a text first", item())
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert "input.1" in [field["field"] for field in error["fields"]]
    clip = gateway.handles["clip_embedder"]
    assert not clip.called("embed_text") and not clip.called("embed_images")


def test_more_images_than_a_batch_upload_is_over_budget(gateway: Gateway) -> None:
    images = [data_url(png(color=(i, 0, 0))) for i in range(MAX_IMAGES + 1)]
    response = gateway.embed("text is not counted as an image", *images)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "over_budget" and error["limit"] == "IMAGE_SEARCH_MAX_BATCH_FILES"
    assert (error["allowed"], error["estimated"]) == (MAX_IMAGES, MAX_IMAGES + 1)
    assert gateway.embed(*images[:MAX_IMAGES]).status_code == 200


def test_a_data_url_never_counts_against_the_text_limits(gateway: Gateway) -> None:
    # Over the 1000 characters of a text; as an image it is fine.
    url = data_url(noise_png(24))
    assert len(url) > 1000
    assert gateway.embed(url).status_code == 200
