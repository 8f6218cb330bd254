"""Baselines the benchmarks compare our Serve graph with, as one uvicorn process each.

    python -m bench.baseline_server --mode embed --models DIR --port P [--threads 1]
    python -m bench.baseline_server --mode mixed --models DIR --port P --work DIR [--threads 2]
    python -m bench.baseline_server --mode search --models DIR --port P --work DIR [--fill N]

`embed`: a bare FastAPI app around the same tiny CLIP model, `POST /v1/embeddings` answering
the same JSON shape as our OpenAI-compatible route: the serving-overhead baseline.

`search`: a bare FastAPI app doing our text-to-image search in-process, the baseline of
search under concurrency: the tiny CLIP (one call at a time, under a lock) and a
`VectorCatalog` whose project "search" holds `--fill` random vectors (`fill_catalog`, as the
graph's is filled); `POST /v1/projects/{project_id}/images/search` checks that the project
exists, embeds the query, searches and answers our route's JSON (the same result fields).
The blocking part runs in a worker thread (`asyncio.to_thread`), the search outside the lock.

`mixed`: the original server's design: every model (diffusion, CLIP, F5-TTS) in one process
and every model call behind one global lock. It serves the three routes of the mixed
workload with the same work per request as the graph (template prompt, generate, PNG
encode; text embed + hnswlib/SQLite search; reference decode, synthesize, MP3 encode), using
the project's own wrappers. Encoding and the index search run outside the lock (generous to
the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

# Module level: FastAPI resolves the route annotations from this namespace.
from fastapi import File, Form, UploadFile
from pydantic import BaseModel

from bench.env import prepare_environment
from bench.inputs import fill_catalog

if TYPE_CHECKING:
    from serve_app.audio import AudioFormat


class EmbeddingsBody(BaseModel):
    model: str = "clip"
    input: str | list[str]


class ImageBody(BaseModel):
    title: str
    description: str
    width: int = 64
    height: int = 64
    steps: int = 2
    seed: int | None = None


class SearchBody(BaseModel):
    query: str
    limit: int = 10


def embed_app(models: Path, threads: int) -> Any:
    from fastapi import FastAPI

    from deployments.clip_model import ClipModel
    from deployments.configs import ClipEmbedderConfig

    model = ClipModel(
        ClipEmbedderConfig(
            model=f"local-dir:{models / 'clip'}", device="cpu", torch_threads=threads
        )
    )
    model.warm_up()
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsBody) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = await asyncio.to_thread(model.embed_texts, texts)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }

    return app


def search_app(models: Path, work: Path, threads: int, fill: int) -> Any:
    from fastapi import FastAPI, HTTPException

    from deployments.clip_model import ClipModel
    from deployments.configs import ClipEmbedderConfig
    from deployments.vector_store.catalog import VectorCatalog

    model = ClipModel(
        ClipEmbedderConfig(
            model=f"local-dir:{models / 'clip'}", device="cpu", torch_threads=threads
        )
    )
    model.warm_up()
    model_lock = threading.Lock()  # the model runs one call at a time
    catalog = VectorCatalog(
        work / "search.db", dim=model.dim, max_elements=50_000, persist_indexes=False
    )
    fill_catalog(catalog, "search", fill, model.dim)

    def search_in_thread(project_id: str, body: SearchBody) -> dict[str, Any]:
        if not catalog.project_exists(project_id):
            raise HTTPException(404, f"project '{project_id}' does not exist")
        with model_lock:
            vector = model.embed_texts([body.query])[0]
        hits = catalog.search(project_id, vector, body.limit)
        return {
            "project_id": project_id,
            "results": [
                {
                    "id": h.record.id,
                    "score": h.score,
                    "filename": h.record.filename,
                    "content_type": h.record.content_type,
                    "width": h.record.width,
                    "height": h.record.height,
                    "file_url": f"/v1/projects/{project_id}/images/{h.record.id}/file",
                }
                for h in hits
            ],
        }

    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v1/projects/{project_id}/images/search")
    async def search(project_id: str, body: SearchBody) -> dict[str, Any]:
        return await asyncio.to_thread(search_in_thread, project_id, body)

    return app


def mixed_app(models: Path, work: Path, threads: int, fill: int) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import Response

    from core.prompt_text import fallback_prompt
    from core.types import ImageParams
    from deployments.clip_model import ClipModel
    from deployments.configs import ClipEmbedderConfig, ImageGeneratorConfig, VoiceClonerConfig
    from deployments.diffusion_model import DiffusionImageModel
    from deployments.vector_store.catalog import VectorCatalog
    from deployments.voice_model import VoiceModel
    from serve_app.audio import decode_audio, encode_audio

    global_lock = threading.Lock()  # the original server: one model call at a time, any model
    image = DiffusionImageModel(
        ImageGeneratorConfig(model=str(models / "diffusion"), device="cpu", torch_threads=threads)
    )
    clip = ClipModel(
        ClipEmbedderConfig(
            model=f"local-dir:{models / 'clip'}", device="cpu", torch_threads=threads
        )
    )
    voice = VoiceModel(
        VoiceClonerConfig(
            model_config_name=str(models / "f5tts" / "model.yaml"),
            checkpoint=str(models / "f5tts" / "model.safetensors"),
            vocab=str(models / "f5tts" / "vocab.txt"),
            vocoder=str(models / "vocos"),
            asr_model=str(models / "whisper"),
            device="cpu",
            torch_threads=threads,
        )
    )
    for model in (image, clip, voice):  # the same warm start as the graph's replicas
        model.warm_up()
    catalog = VectorCatalog(
        work / "baseline.db", dim=clip.dim, max_elements=50_000, persist_indexes=False
    )
    fill_catalog(catalog, "mix", fill, clip.dim)

    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v1/images/generate")
    def generate(body: ImageBody) -> Response:
        prompt = fallback_prompt(body.title, body.description)
        params = ImageParams(width=body.width, height=body.height, steps=body.steps, seed=body.seed)
        with global_lock:
            result = image.generate(prompt, params)
        return Response(result.to_png(), media_type="image/png")

    @app.post("/v1/projects/{project_id}/images/search")
    def search(project_id: str, body: SearchBody) -> dict[str, Any]:
        with global_lock:
            vector = clip.embed_texts([body.query])[0]
        hits = catalog.search(project_id, vector, body.limit)
        return {
            "project_id": project_id,
            "results": [{"id": h.record.id, "score": h.score} for h in hits],
        }

    @app.post("/v1/voice/generate")
    def speak(
        ref_audio: UploadFile = File(...),  # noqa: B008 - FastAPI's form-field default
        text: str = Form(...),
        ref_text: str = Form(...),
        nfe_steps: int = Form(8),
        seed: int | None = Form(None),
        format: str = Form("mp3"),  # the route's field name, shadowing the builtin
    ) -> Response:
        data = ref_audio.file.read()
        decoded = decode_audio(data, target_sr=24_000, max_seconds=60, max_bytes=10 * 2**20)
        with global_lock:
            speech = voice.synthesize(
                decoded.samples, decoded.sample_rate, ref_text, text, nfe_steps=nfe_steps, seed=seed
            )
        audio, content_type = encode_audio(
            speech.samples, speech.sample_rate, cast("AudioFormat", format)
        )
        return Response(audio, media_type=content_type)

    return app


def main() -> None:
    prepare_environment()  # before the models (huggingface_hub) are imported
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["embed", "mixed", "search"], required=True)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("."))
    parser.add_argument("--fill", type=int, default=1000)
    args = parser.parse_args()

    import uvicorn

    if args.mode == "embed":
        app = embed_app(args.models, args.threads)
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        make = search_app if args.mode == "search" else mixed_app
        app = make(args.models, args.work, args.threads, args.fill)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=5,
    )


if __name__ == "__main__":
    main()
