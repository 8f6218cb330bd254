"""The OpenAI-compatible routes, driven by the official `openai` client through Serve's proxy.

Images come from the main app (tiny diffusion model, local store, defaults 64x64, at most
256x256 pixels); embeddings, of texts and images, from the search app (tiny CLIP, under
/search, images within 256 KiB and 4 million pixels); `/v1/models` from both.
"""

from __future__ import annotations

import base64
import io
import time
import uuid

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from ray import serve
from starlette.requests import Request

from serve_app.routes.openai_compat import absolute_url
from tests.integration.conftest import CLIP_ID, DeployedApp, SearchApp

PROMPT = "a red fox in the snow, poster art"


def client(url: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-not-checked", base_url=f"{url}/v1", timeout=120, **kwargs)


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image


def b64_pngs(response) -> list[bytes]:
    return [base64.b64decode(item.b64_json) for item in response.data]


@pytest.fixture(scope="module")
def clip_dim(search_app: SearchApp) -> int:
    handle = serve.get_deployment_handle("ClipEmbedder", app_name=search_app.app_name)
    return int(handle.describe.remote().result(timeout_s=60)["dim"])


# --- images -----------------------------------------------------------------------------------


def test_generate_b64_json_gives_pngs_of_the_asked_size(app: DeployedApp) -> None:
    response = client(app.url).images.generate(
        prompt=PROMPT,
        model="dall-e-3",  # accepted and ignored, like OpenAI's other options below
        n=2,
        size="96x64",
        response_format="b64_json",
        quality="hd",
        style="vivid",
        user="someone",
    )
    assert abs(response.created - time.time()) < 600
    assert len(response.data) == 2
    first, second = b64_pngs(response)
    assert decode_png(first).size == decode_png(second).size == (96, 64)
    assert first != second  # no seed: each image gets its own random seed
    for item in response.data:
        assert item.url is None
        assert item.revised_prompt == PROMPT
        assert isinstance(item.model_extra["seed"], int)
    # The prompt is used as given: the prompt optimizer (the loopback OpenAI) is not asked.
    assert app.openai.chat_requests == []


def test_seed_makes_images_reproducible(app: DeployedApp) -> None:
    openai_client = client(app.url)

    def generate(**extra) -> list[bytes]:
        response = openai_client.images.generate(
            prompt=PROMPT, n=2, size="64x64", extra_body={"seed": 5, "steps": 2, **extra}
        )
        assert [item.model_extra["seed"] for item in response.data] == [5, 6]
        return b64_pngs(response)

    first = generate()
    assert first == generate()  # the same seeds: the same bytes
    assert first[0] != first[1]  # seed 5 and seed 6
    # n=1 with seed 6 is the second image of the pair.
    single = openai_client.images.generate(prompt=PROMPT, size="64x64", extra_body={"seed": 6})
    assert b64_pngs(single) == [first[1]]
    # The extensions reach the generator (a negative prompt only counts with guidance).
    assert generate(guidance_scale=3.0, negative_prompt="blurry") != first
    other_prompt = openai_client.images.generate(
        prompt="a lighthouse at night", size="64x64", extra_body={"seed": 5}
    )
    assert b64_pngs(other_prompt) != [first[0]]


def test_response_format_url_links_the_stored_png(app: DeployedApp) -> None:
    openai_client = client(app.url)
    response = openai_client.images.generate(
        prompt=PROMPT, response_format="url", extra_body={"seed": 7}
    )
    (item,) = response.data
    assert item.b64_json is None
    # The local store's route, made absolute so the client can fetch it as it is.
    assert item.url.startswith(f"{app.url}/v1/storage/AI/POSTER/") and item.url.endswith(".png")
    fetched = httpx.get(item.url, timeout=30)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    assert decode_png(fetched.content).size == (64, 64)  # the server's default size
    key = item.url.removeprefix(f"{app.url}/v1/storage/")
    assert (app.storage_dir / key).read_bytes() == fetched.content
    inline = openai_client.images.generate(prompt=PROMPT, extra_body={"seed": 7})
    assert b64_pngs(inline) == [fetched.content]


@pytest.mark.parametrize("size", ["65x64", "64x4096", "32x32", "banana", "64 x 64", "64x"])
def test_invalid_size_is_422_naming_size(app: DeployedApp, size: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client(app.url).images.generate(prompt=PROMPT, size=size)
    error = caught.value
    assert error.status_code == 422
    assert error.code == "invalid_request"
    assert "size" in error.message
    assert error.body["message"] == "invalid request: size"
    (field,) = error.body["fields"]
    assert field["field"] == "size" and "WIDTHxHEIGHT" in field["message"]


def test_size_over_the_pixel_budget_is_422(app: DeployedApp) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client(app.url).images.generate(prompt=PROMPT, size="512x512")
    assert "size 512x512" in caught.value.message
    assert "IMAGE_MAX_PIXELS" in caught.value.body["message"]
    assert caught.value.body["fields"] == [{"field": "size", "message": "too large"}]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"prompt": PROMPT, "n": 5}, "n"),
        ({"prompt": PROMPT, "n": 0}, "n"),
        ({"prompt": PROMPT, "response_format": "png"}, "response_format"),
        ({"prompt": PROMPT, "extra_body": {"steps": 0}}, "steps"),
        ({"prompt": PROMPT, "extra_body": {"seed": -1}}, "seed"),
        ({"prompt": PROMPT, "extra_body": {"guidance_scale": 31}}, "guidance_scale"),
    ],
)
def test_other_invalid_image_fields_are_422(app: DeployedApp, kwargs: dict, field: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client(app.url).images.generate(**kwargs)
    assert field in [entry["field"] for entry in caught.value.body["fields"]]


def test_images_without_the_image_module_is_503(search_app: SearchApp) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(search_app.url, max_retries=0).images.generate(prompt=PROMPT)
    assert caught.value.status_code == 503
    assert caught.value.code == "module_disabled"
    assert "IMAGE_ENABLED" in caught.value.message


# --- embeddings -------------------------------------------------------------------------------


def test_embedding_of_one_string(search_app: SearchApp, clip_dim: int) -> None:
    response = client(search_app.url).embeddings.create(
        model="clip-vit", input="a red fox in the snow", encoding_format="float"
    )
    assert response.object == "list"
    assert response.model == "clip-vit"
    (item,) = response.data
    assert (item.object, item.index) == ("embedding", 0)
    assert len(item.embedding) == clip_dim
    assert np.linalg.norm(item.embedding) == pytest.approx(1.0, abs=1e-4)
    # Usage counts whitespace-separated words.
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (6, 6)


def test_embeddings_of_a_list_keep_order_and_match_single_calls(search_app: SearchApp) -> None:
    texts = ["a red fox", "고양이", "a blue car on a bridge", "a red fox"]
    openai_client = client(search_app.url)
    response = openai_client.embeddings.create(model=CLIP_ID, input=texts, encoding_format="float")
    assert [item.index for item in response.data] == [0, 1, 2, 3]
    vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert np.allclose(vectors[0], vectors[3], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[2], atol=1e-3)
    for text, vector in zip(texts[:3], vectors[:3], strict=True):
        single = openai_client.embeddings.create(model=CLIP_ID, input=text, encoding_format="float")
        assert np.allclose(single.data[0].embedding, vector, atol=1e-5)
    assert response.usage.prompt_tokens == 3 + 1 + 6 + 3


def test_float_and_base64_encodings_agree(search_app: SearchApp, clip_dim: int) -> None:
    texts = ["a lighthouse at night", "two dogs"]
    openai_client = client(search_app.url)
    floats = openai_client.embeddings.create(model=CLIP_ID, input=texts, encoding_format="float")
    encoded = openai_client.embeddings.create(model=CLIP_ID, input=texts, encoding_format="base64")
    # Without encoding_format the client asks for base64 itself and decodes it to floats.
    default = openai_client.embeddings.create(model=CLIP_ID, input=texts)
    for plain, packed, decoded in zip(floats.data, encoded.data, default.data, strict=True):
        assert isinstance(packed.embedding, str)
        unpacked = np.frombuffer(base64.b64decode(packed.embedding), dtype="<f4")
        assert unpacked.shape == (clip_dim,)
        assert np.array_equal(unpacked, np.array(plain.embedding, dtype=np.float32))
        assert np.array_equal(np.array(decoded.embedding, dtype=np.float32), unpacked)


def test_dimensions_must_be_the_models(search_app: SearchApp, clip_dim: int) -> None:
    openai_client = client(search_app.url)
    response = openai_client.embeddings.create(model=CLIP_ID, input="cat", dimensions=clip_dim)
    assert len(response.data[0].embedding) == clip_dim
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        openai_client.embeddings.create(model=CLIP_ID, input="cat", dimensions=clip_dim // 2)
    assert "dimensions" in caught.value.message and str(clip_dim) in caught.value.message
    assert caught.value.body["fields"][0]["field"] == "dimensions"


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
def test_token_arrays_are_refused_with_a_clear_message(search_app: SearchApp, tokens: list) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client(search_app.url).embeddings.create(model=CLIP_ID, input=tokens)
    assert caught.value.status_code == 422
    assert "token-id arrays are not supported" in caught.value.message
    assert caught.value.body["fields"][0]["field"] == "input"


@pytest.mark.parametrize(
    ("texts", "field"),
    [([], "input"), (["ok"] * 257, "input"), (["x" * 1001], "input.0"), (["ok", "  "], "input.1")],
)
def test_bad_embedding_inputs_are_422(search_app: SearchApp, texts: list, field: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client(search_app.url).embeddings.create(model=CLIP_ID, input=texts)
    assert field in [entry["field"] for entry in caught.value.body["fields"]]


def test_embeddings_without_the_search_module_is_503(app: DeployedApp) -> None:
    # The client retries 503 by default; once is enough here.
    with pytest.raises(openai.APIStatusError) as caught:
        client(app.url, max_retries=0).embeddings.create(model=CLIP_ID, input="cat")
    error = caught.value
    assert error.status_code == 503
    assert error.code == "module_disabled"
    assert "IMAGE_SEARCH_ENABLED" in error.message
    assert error.body["enabled_by"] == "IMAGE_SEARCH_ENABLED"


# --- models -----------------------------------------------------------------------------------


def test_models_list_and_retrieve_the_search_apps_embedder(
    search_app: SearchApp, clip_dim: int
) -> None:
    openai_client = client(search_app.url)
    models = list(openai_client.models.list())
    # CLIP_MODEL=local-dir:<tmp>/clip: a local model is named by its folder, no server path.
    assert [model.id for model in models] == [CLIP_ID]
    (model,) = models
    assert (model.object, model.owned_by) == ("model", "common-ai-server")
    assert abs(model.created - time.time()) < 24 * 3600
    assert model.model_extra["module"] == "image_search"
    assert model.model_extra["endpoints"] == ["/v1/embeddings"]
    assert model.model_extra["dimensions"] == clip_dim
    retrieved = openai_client.models.retrieve(CLIP_ID)
    assert (retrieved.id, retrieved.created) == (CLIP_ID, model.created)
    # Without a `model`, /v1/embeddings answers with the listed id.
    response = httpx.post(f"{search_app.url}/v1/embeddings", json={"input": "cat"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == CLIP_ID


def test_models_list_the_image_apps_generator_only(app: DeployedApp) -> None:
    # The image app has image search and voice off: their models are not listed.
    models = client(app.url).models.list()
    assert [(model.id, model.model_extra["module"]) for model in models] == [("diffusion", "image")]
    assert models.data[0].model_extra["endpoints"] == ["/v1/images/generations"]
    assert "dimensions" not in models.data[0].model_extra
    assert client(app.url).models.retrieve("diffusion").id == "diffusion"


@pytest.mark.parametrize("model_id", ["gpt-4o", "stabilityai/sd-turbo", "clip/extra"])
def test_an_unknown_model_is_404_in_the_error_shape(search_app: SearchApp, model_id: str) -> None:
    # The client sends "stabilityai%2Fsd-turbo": the path converter still reaches the route
    # (Starlette's own 404 would be code "not_found" without "model").
    with pytest.raises(openai.NotFoundError) as caught:
        client(search_app.url).models.retrieve(model_id)
    error = caught.value
    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert model_id in error.message
    assert error.body["model"] == model_id
    assert error.body["available"] == [CLIP_ID]
    raw = httpx.get(f"{search_app.url}/v1/models/{model_id}", timeout=30)
    assert raw.status_code == 404 and raw.json()["error"]["code"] == "model_not_found"


# --- image embeddings -------------------------------------------------------------------------


def pattern_png(seed: int, side: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def floats(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def test_image_embeddings_are_the_vectors_search_by_image_uses(search_app: SearchApp) -> None:
    first, second = pattern_png(1), pattern_png(2)
    openai_client = client(search_app.url)
    response = openai_client.embeddings.create(
        model=CLIP_ID, input=[data_url(first), data_url(second)], encoding_format="float"
    )
    assert [item.index for item in response.data] == [0, 1]
    vectors = floats(response)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # The ClipEmbedder's image tower on the same bytes, as uploads and search by image call it.
    clip = serve.get_deployment_handle("ClipEmbedder", app_name=search_app.app_name)
    direct = np.asarray(clip.embed_images.remote([first, second]).result(timeout_s=60))
    assert np.allclose(vectors, direct, atol=1e-4)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)

    # The index scores by cosine: search by image and by text in a project holding both
    # images score exactly what the vectors from /v1/embeddings give.
    pid = f"oai-{uuid.uuid4().hex[:10]}"
    files = [("files", ("first.png", first)), ("files", ("second.png", second))]
    upload = httpx.post(f"{search_app.url}/v1/projects/{pid}/images/batch", files=files, timeout=60)
    assert upload.status_code == 201, upload.text
    ids = [item["id"] for item in upload.json()["items"]]
    by_image = httpx.post(
        f"{search_app.url}/v1/projects/{pid}/images/search/by-image",
        files={"file": ("q.png", first)},
        timeout=60,
    )
    assert by_image.status_code == 200, by_image.text
    scores = {hit["id"]: hit["score"] for hit in by_image.json()["results"]}
    assert scores[ids[0]] == pytest.approx(float(vectors[0] @ vectors[0]), abs=1e-4)
    assert scores[ids[1]] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-4)
    query = "a red fox in the snow"
    text = floats(
        openai_client.embeddings.create(model=CLIP_ID, input=query, encoding_format="float")
    )
    by_text = httpx.post(
        f"{search_app.url}/v1/projects/{pid}/images/search",
        json={"query": query, "limit": 10},
        timeout=60,
    )
    assert by_text.status_code == 200, by_text.text
    scores = {hit["id"]: hit["score"] for hit in by_text.json()["results"]}
    for image_id, vector in zip(ids, vectors, strict=True):
        assert scores[image_id] == pytest.approx(float(text[0] @ vector), abs=1e-4)


def test_mixed_texts_and_images_keep_their_order(search_app: SearchApp) -> None:
    first, second = pattern_png(3), pattern_png(4)
    openai_client = client(search_app.url)
    mixed = openai_client.embeddings.create(
        model=CLIP_ID,
        input=[
            "a red fox",
            data_url(first),
            # OpenAI's content-part shape; the client sends it as it is.
            {"type": "image_url", "image_url": {"url": data_url(second)}},  # type: ignore[list-item]
            "two dogs on a bridge",
        ],
    )  # no encoding_format: the client asks for base64 and decodes it
    assert [item.index for item in mixed.data] == [0, 1, 2, 3]
    got = floats(mixed)
    texts = floats(
        openai_client.embeddings.create(
            model=CLIP_ID, input=["a red fox", "two dogs on a bridge"], encoding_format="float"
        )
    )
    images = floats(
        openai_client.embeddings.create(
            model=CLIP_ID, input=[data_url(second), data_url(first)], encoding_format="float"
        )
    )
    assert np.allclose(got, np.stack([texts[0], images[1], images[0], texts[1]]), atol=1e-5)
    assert mixed.usage.prompt_tokens == 3 + 5  # the texts' words; images count none


def bomb_png() -> bytes:
    """A few kilobytes that decode to 6 million pixels: over IMAGE_SEARCH_MAX_PIXELS (4M)."""
    buffer = io.BytesIO()
    Image.new("L", (3000, 2000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("item", "status", "words"),
    [
        (lambda: data_url(b"plain text, not an image"), 415, "not an image in an accepted format"),
        (lambda: data_url(b"%PDF-1.4", "application/pdf"), 415, "application/pdf, not an image"),
        (lambda: data_url(bomb_png()), 413, "IMAGE_SEARCH_MAX_PIXELS"),
        # Noise does not compress: about 300 KB, over IMAGE_SEARCH_MAX_BYTES (256 KiB) here.
        (lambda: data_url(pattern_png(5, side=320)), 413, "IMAGE_SEARCH_MAX_BYTES"),
        (lambda: "data:image/png;base64,not*base64", 422, "not valid base64"),
        (
            lambda: {"type": "image_url", "image_url": {"url": "http://169.254.169.254/a.png"}},
            422,
            "remote image URLs are not fetched",
        ),
    ],
)
def test_a_bad_image_gets_its_status(search_app: SearchApp, item, status: int, words: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(search_app.url, max_retries=0).embeddings.create(
            model=CLIP_ID, input=["a text first", item()], encoding_format="float"
        )
    error = caught.value
    assert error.status_code == status
    assert words in error.message and "input.1" in error.message
    assert error.body["fields"][0]["field"] == "input.1"


def test_more_images_than_a_batch_upload_is_over_budget(search_app: SearchApp) -> None:
    images = [data_url(pattern_png(10 + i, side=8)) for i in range(9)]  # MAX_BATCH_FILES=8
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client(search_app.url).embeddings.create(model=CLIP_ID, input=images)
    assert caught.value.code == "over_budget"
    assert caught.value.body["limit"] == "IMAGE_SEARCH_MAX_BATCH_FILES"


# --- links under a route prefix (no Ray needed) -----------------------------------------------


@pytest.mark.parametrize(
    ("root_path", "url", "expected"),
    [
        ("", "/v1/storage/AI/POSTER/a.png", "http://h:8000/v1/storage/AI/POSTER/a.png"),
        (
            "/search",
            "/v1/storage/AI/POSTER/a.png",
            "http://h:8000/search/v1/storage/AI/POSTER/a.png",
        ),
        (
            "/search",
            "https://bucket.example/AI/POSTER/a.png?X-Amz-Signature=1",
            "https://bucket.example/AI/POSTER/a.png?X-Amz-Signature=1",
        ),
        ("/search", "//cdn.example/AI/POSTER/a.png", "http://cdn.example/AI/POSTER/a.png"),
    ],
)
def test_relative_store_urls_become_absolute_under_the_route_prefix(
    root_path: str, url: str, expected: str
) -> None:
    # Serve passes the route prefix as root_path, with the full path in `path`.
    scope = {
        "type": "http",
        "scheme": "http",
        "server": ("h", 8000),
        "headers": [(b"host", b"h:8000")],
        "root_path": root_path,
        "path": f"{root_path}/v1/images/generations",
        "query_string": b"",
    }
    assert absolute_url(Request(scope), url) == expected
