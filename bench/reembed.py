"""Benchmark 9, re-embedding throughput after a CLIP model change (images/s), in process.

    python -m bench.reembed [--n 500] [--batches 1,8,32] [--rounds 1] [--real]
    python -m bench --only reembed           # the same, as a section of docs/benchmarks.md

A catalog of `n` images (one project) whose vectors are in an "old" space, with real PNG
originals (256x256, smooth colour fields plus noise, as `bench.inputs.random_images` makes
them) in a `LocalObjectStore` in a temporary directory, is opened with a new model as its
target, as the VectorIndex replica or `python -m serve_app.reembed` open it after a model
change. No Ray: the model runs in this process, as in the CLI.

Measured, for each batch size, side by side and interleaved round by round (the order
alternates):

- the pipeline: `Reembedder(catalog, store.get, model.embed_images, batch_size=B,
  switch=True).run()` from start to the switch (read each original from the store, decode,
  embed, store the pending vectors in SQLite batch by batch, then `switch_to_target`, which
  builds the new HNSW index and moves the vectors in one transaction): images/s, and the
  switch's own seconds, with where the rest of the time went (reading originals, the model,
  SQLite);
- the baseline: the bare model on the same bytes, already in memory (`model.embed_images` in
  batches of B; no store, no SQLite, no index): images/s. The ratio pipeline / bare is what
  the re-embedding machinery costs over the model alone.

Models, through the production wrapper (`ClipModel`): the tiny stand-in of the default
(`serve_app.tiny.clip_multilingual`, always; it tells the machinery's own cost, as its model
is almost free) and, with `--real`, the real-sized architecture with random weights: open_clip's
ViT-B-32 (`bench.real_models`), whose image tower is the default `xlm-roberta-base-ViT-B-32`'s
(the same `vision_cfg` and `embed_dim`, checked here). Its XLM-R text tower is not built
(`bench.real_models` has no real-sized XLM-R): re-embedding runs only the image tower.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.context import Context, Section
from bench.tables import fmt, md_table
from core import defaults

PROJECT = "bench"
USER_GAP_S = 0.25  # between a simulated user's calls during re-embedding
OLD_MODEL, OLD_DIM = "old-model", 16
IMAGE_SIDE = 256
BATCHES = (1, 8, 32)
DEFAULT_MODEL = "xlm-roberta-base-ViT-B-32"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def png_originals(count: int, seed: int, side: int = IMAGE_SIDE) -> list[bytes]:
    """`count` distinct PNGs: smooth colour fields plus noise (PNG keeps the noise, so each
    is about 150 KB to read and decode, like a photo's PNG of that size)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    images = []
    for _ in range(count):
        a, b, c = rng.random(3)
        base = np.stack([xx * a, yy * b, (xx + yy) * c / 2], axis=-1) * 200
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def _key(i: int) -> str:
    return f"AI/SEARCH/{PROJECT}/img-{i:06d}.png"


def fill_store(root: Path, originals: Sequence[bytes]) -> Any:
    """A `LocalObjectStore` at `root` holding the originals under `_key(i)`."""
    from core.storage.local import LocalObjectStore

    store = LocalObjectStore(root)
    for i, data in enumerate(originals):
        store.put(_key(i), data, "image/png")
    return store


def make_old_catalog(db: Path, originals: Sequence[bytes], seed: int) -> None:
    """A catalog whose `len(originals)` images have random vectors of the old model."""
    import hashlib

    from core.records import NewImage
    from deployments.vector_store.catalog import VectorCatalog

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(originals), OLD_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    images = [
        NewImage(
            id=f"img-{i:06d}",
            project_id=PROJECT,
            object_key=_key(i),
            filename=f"{i}.png",
            content_type="image/png",
            size_bytes=len(data),
            width=IMAGE_SIDE,
            height=IMAGE_SIDE,
            sha256=hashlib.sha256(data).hexdigest(),
            vector=vectors[i],
        )
        for i, data in enumerate(originals)
    ]
    with VectorCatalog(
        db, dim=OLD_DIM, max_elements=len(images), model=OLD_MODEL, persist_indexes=False
    ) as catalog:
        for start in range(0, len(images), 1000):
            catalog.add_many(images[start : start + 1000])


def _timed_catalog_class() -> type:
    """`VectorCatalog` that times its re-embedding steps (a subclass, so that `Reembedder`
    drives the real thing)."""
    from deployments.vector_store.catalog import VectorCatalog

    class TimedCatalog(VectorCatalog):
        todo_s = 0.0
        store_s = 0.0
        switch_s = float("nan")

        def reembed_todo(self, limit: int) -> Any:
            t0 = time.perf_counter()
            try:
                return super().reembed_todo(limit)
            finally:
                self.todo_s += time.perf_counter() - t0

        def store_reembedded(self, vectors: Any) -> int:
            t0 = time.perf_counter()
            try:
                return super().store_reembedded(vectors)
            finally:
                self.store_s += time.perf_counter() - t0

        def switch_to_target(self) -> bool:
            t0 = time.perf_counter()
            switched = super().switch_to_target()
            if switched:
                self.switch_s = time.perf_counter() - t0
            return switched

    return TimedCatalog


def _timed(fn: Callable[..., Any], total: list[float]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            total[0] += time.perf_counter() - t0

    return call


def pipeline_once(
    db: Path, store: Any, model: Any, space: tuple[str, str], n: int, batch: int
) -> dict[str, float]:
    """One re-embedding of the old catalog at `db` with `model`, from start to the switch."""
    from deployments.vector_store.reembed import Reembedder

    catalog = _timed_catalog_class()(
        db,
        dim=model.dim,
        max_elements=n,
        model=space[0],
        pretrained=space[1],
        persist_indexes=False,
    )
    try:
        assert catalog.reembedding, "the catalog must start in the old space"
        read_s, embed_s = [0.0], [0.0]
        worker = Reembedder(
            catalog,
            _timed(store.get, read_s),
            _timed(model.embed_images, embed_s),
            batch_size=batch,
            switch=True,
        )
        t0 = time.perf_counter()
        finished = worker.run()
        seconds = time.perf_counter() - t0
        assert finished and not catalog.reembedding
        assert catalog.reembed_counts() == (n, n), catalog.reembed_counts()
        assert worker.status()["set_aside"] == 0
        return {
            "s": seconds,
            "switch_s": catalog.switch_s,
            "read_s": read_s[0],
            "embed_s": embed_s[0],
            "sqlite_s": catalog.todo_s + catalog.store_s,
        }
    finally:
        catalog.close(save=False)


def users_during_once(
    db: Path, store: Any, model: Any, space: tuple[str, str], n: int, batch: int, probe: bytes
) -> dict[str, Any]:
    """A re-embedding in batches of `batch` while a user embeds one image every USER_GAP_S
    through the same model (its lock stands for the replica's one request at a time):
    how long each user call took, and the re-embedding's rate."""
    latencies: list[float] = []
    done = threading.Event()

    def user() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            model.embed_images([probe])
            latencies.append(time.perf_counter() - t0)
            done.wait(USER_GAP_S)

    thread = threading.Thread(target=user, name="bench-user", daemon=True)
    thread.start()
    try:
        figures = pipeline_once(db, store, model, space, n, batch)
    finally:
        done.set()
        thread.join()
    return {
        "images_per_s": n / figures["s"],
        "user_p50_s": float(np.median(latencies)),
        "user_p90_s": float(np.percentile(latencies, 90)),
        "user_max_s": max(latencies),
        "user_calls": len(latencies),
    }


def user_alone(model: Any, probe: bytes, calls: int = 10) -> float:
    """Median seconds of one single-image embedding with nothing else running."""
    seconds = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model.embed_images([probe])
        seconds.append(time.perf_counter() - t0)
    return float(np.median(seconds))


def run_users(
    work: Path,
    name: str,
    model: Any,
    space: tuple[str, str],
    originals: Sequence[bytes],
    store: Any,
    rounds: int,
    seed: int,
) -> dict[str, Any]:
    """The server's two batch sizes (idle, users active) with a user calling, interleaved."""
    n = len(originals)
    probe = png_originals(1, seed + 1)[0]  # not one of the catalog's images
    sizes = {
        "idle": defaults.IMAGE_SEARCH_REEMBED_BATCH,
        "busy": defaults.IMAGE_SEARCH_REEMBED_BUSY_BATCH,
    }
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sizes}
    alone: list[float] = []
    for r in range(rounds):
        alone.append(user_alone(model, probe))
        for kind in ("idle", "busy") if r % 2 == 0 else ("busy", "idle"):
            db = work / f"{name}-users-{kind}-r{r}" / "catalog.db"
            make_old_catalog(db, originals, seed)
            runs[kind].append(users_during_once(db, store, model, space, n, sizes[kind], probe))
    out: dict[str, Any] = {"alone_s": float(np.median(alone)), "n": n}
    for kind, batch in sizes.items():
        med = {k: float(np.median([x[k] for x in runs[kind]])) for k in runs[kind][0]}
        out[kind] = {"batch": batch, **med}
        print(
            f"  {name} users, batch {batch}: user p50 {med['user_p50_s'] * 1000:.0f} ms, max "
            f"{med['user_max_s'] * 1000:.0f} ms (alone {out['alone_s'] * 1000:.0f} ms), "
            f"re-embedding {med['images_per_s']:.1f} images/s (load {load_average()})",
            flush=True,
        )
    return out


def bare_once(model: Any, data: Sequence[bytes], batch: int) -> float:
    """Seconds for `model.embed_images` over `data` in batches of `batch`."""
    t0 = time.perf_counter()
    for start in range(0, len(data), batch):
        model.embed_images(list(data[start : start + batch]))
    return time.perf_counter() - t0


def load_clip(path: Path, device: str, threads: int) -> Any:
    from deployments.clip_model import ClipModel
    from deployments.configs import ClipEmbedderConfig

    return ClipModel(
        ClipEmbedderConfig(
            model=f"local-dir:{path}",
            pretrained=None,
            device=device,  # type: ignore[arg-type]
            torch_threads=threads,
            warm_up=False,
        )
    )


def run_model(
    work: Path,
    name: str,
    path: Path,
    originals: Sequence[bytes],
    store: Any,
    batches: Sequence[int],
    rounds: int,
    device: str,
    threads: int,
    seed: int,
    users: bool = False,
) -> dict[str, Any]:
    """Pipeline and bare model at each batch size, interleaved; medians over `rounds`. With
    `users`, also a user's single-image calls during re-embedding at the server's two batch
    sizes."""
    n = len(originals)
    t0 = time.perf_counter()
    model = load_clip(path, device, threads)
    out: dict[str, Any] = {
        "model": name,
        "path": str(path),
        "dim": model.dim,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": threads,
        "load_s": time.perf_counter() - t0,
        "load_before": load_average(),
    }
    model.warm_up()
    data = [store.get(_key(i)) for i in range(n)]
    space = (f"local-dir:{path}", "")
    per_batch: dict[str, Any] = {}
    for batch in batches:
        model.embed_images(data[:batch])  # this batch shape once before timing
        runs: list[dict[str, float]] = []
        bare: list[float] = []
        for r in range(rounds):
            db = work / f"{name}-b{batch}-r{r}" / "catalog.db"
            make_old_catalog(db, originals, seed)
            for step in ("pipeline", "bare") if r % 2 == 0 else ("bare", "pipeline"):
                if step == "pipeline":
                    runs.append(pipeline_once(db, store, model, space, n, batch))
                else:
                    bare.append(bare_once(model, data, batch))
        med = {k: float(np.median([x[k] for x in runs])) for k in runs[0]}
        bare_s = float(np.median(bare))
        per_batch[str(batch)] = {
            **med,
            "bare_s": bare_s,
            "pipeline_images_per_s": n / med["s"],
            "bare_images_per_s": n / bare_s,
            "ratio": bare_s / med["s"],
        }
        print(
            f"  {name} batch {batch}: pipeline {n / med['s']:.1f} images/s (switch "
            f"{med['switch_s']:.3f} s), bare {n / bare_s:.1f} images/s, ratio "
            f"{bare_s / med['s']:.2f} (load {load_average()})",
            flush=True,
        )
    out["batches"] = per_batch
    if users:
        out["users"] = run_users(work, name, model, space, originals, store, rounds, seed)
    out["load_after"] = load_average()
    return out


def same_image_tower_as_default() -> bool:
    """Whether open_clip's ViT-B-32 and the default's configs have the same image tower."""
    import open_clip

    from bench.real_models import CLIP_ARCH

    ours, default = open_clip.get_model_config(CLIP_ARCH), open_clip.get_model_config(DEFAULT_MODEL)
    return bool(
        ours
        and default
        and ours["vision_cfg"] == default["vision_cfg"]
        and ours["embed_dim"] == default["embed_dim"]
    )


def run_all(
    work: Path,
    tiny: Path,
    real: Path | None,
    n: int,
    batches: Sequence[int],
    rounds: int,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
    real_n: int | None = None,
    users: Sequence[str] = ("real",),
) -> dict[str, Any]:
    """Every model's figures. `tiny`: the tiny multilingual CLIP's directory; `real`: the
    real-sized ViT-B-32's, or None to skip it. `users`: the models ("tiny", "real") also
    measured with a user calling during re-embedding (the tiny model is too fast to keep
    anyone waiting, so by default only the real-sized one)."""
    threads = threads or os.cpu_count() or 1
    result: dict[str, Any] = {
        "n": n,
        "image_side": IMAGE_SIDE,
        "batches": list(batches),
        "rounds": rounds,
        "default_batch": defaults.IMAGE_SEARCH_REEMBED_BATCH,
        "load_before": load_average(),
        "models": [],
    }
    # The catalog warns at every open that it answers from the old model's vectors.
    catalog_log = logging.getLogger("deployments.vector_store.catalog")
    level = catalog_log.level
    catalog_log.setLevel(logging.ERROR)
    try:
        _run_models(
            result, work, tiny, real, n, batches, rounds, device, threads, seed, real_n, users
        )
    finally:
        catalog_log.setLevel(level)
    if real:
        result["same_image_tower_as_default"] = same_image_tower_as_default()
    result["load_after"] = load_average()
    return result


def _run_models(
    result: dict[str, Any],
    work: Path,
    tiny: Path,
    real: Path | None,
    n: int,
    batches: Sequence[int],
    rounds: int,
    device: str,
    threads: int,
    seed: int,
    real_n: int | None,
    users: Sequence[str],
) -> None:
    with tempfile.TemporaryDirectory(prefix="reembed-bench-", dir=work) as tmp:
        root = Path(tmp)
        sizes = [("tiny", tiny, n)] + ([("real", real, real_n or n)] if real else [])
        made: dict[int, tuple[list[bytes], Any]] = {}
        for kind, path, count in sizes:
            if count not in made:
                originals = png_originals(count, seed)
                made[count] = (originals, fill_store(root / f"store-{count}", originals))
            originals, store = made[count]
            result["png_kb_mean"] = sum(map(len, originals)) / len(originals) / 1024
            name = (
                "tiny xlm-roberta-base-ViT-B-32 stand-in"
                if kind == "tiny"
                else "ViT-B-32 real size, random weights"
            )
            print(f"  {name}: {count} images ...", flush=True)
            figures = run_model(
                root,
                kind,
                path,
                originals,
                store,
                batches,
                rounds,
                device,
                threads,
                seed,
                users=kind in users,
            )
            figures["label"], figures["n"] = name, count
            result["models"].append(figures)


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for m in r["models"]:
        for batch, b in m["batches"].items():
            other = b["s"] - b["switch_s"] - b["read_s"] - b["embed_s"] - b["sqlite_s"]
            rows.append(
                [
                    f"{m['label']} ({m['dim']}-d), {m['n']:,} images",
                    batch,
                    fmt(b["bare_images_per_s"], 1),
                    fmt(b["pipeline_images_per_s"], 1),
                    f"{fmt(b['ratio'], 2)}x",
                    fmt(b["switch_s"], 3),
                    f"{fmt(b['read_s'], 2)} / {fmt(b['embed_s'], 2)} / "
                    f"{fmt(b['sqlite_s'], 2)} / {fmt(other, 2)}",
                ]
            )
    table = md_table(
        [
            "model",
            "batch",
            "bare model, images/s",
            "re-embedding to the switch, images/s",
            "pipeline / bare",
            "switch, s",
            "pipeline s: read originals / model / SQLite / rest",
        ],
        rows,
    )
    first = r["models"][0]
    real = [m for m in r["models"] if m is not first]
    tower = ""
    if real:
        same = "the same" if r.get("same_image_tower_as_default") else "**not** the same"
        tower = (
            f" The real-sized model is open_clip's ViT-B-32 with random weights "
            f"(`bench.real_models`): its image tower is {same} as the default "
            f"`{DEFAULT_MODEL}`'s (vision_cfg and embed_dim compared in this run); its "
            "XLM-R text tower is not built, and re-embedding runs only the image tower."
        )
    loads = "; ".join(
        f"{m['label']}: {m['load_before']} before, {m['load_after']} after" for m in r["models"]
    )
    return "\n\n".join(
        [
            f"A catalog whose images have vectors of an old model is re-embedded with the new "
            f"model from its PNG originals ({r['image_side']}x{r['image_side']}, "
            f"{fmt(r['png_kb_mean'], 0)} KB on average) in a `LocalObjectStore`, in process "
            f"(no Ray), as `python -m serve_app.reembed` runs it: `Reembedder(..., "
            f"switch=True).run()` from start to the switch (`switch_to_target`, which builds the "
            f"new HNSW index), against the bare model (`ClipModel.embed_images` in batches of "
            f"the same size on the same bytes, already in memory). {first['device']}, "
            f"{first['dtype']}, {first['threads']} torch threads; median of {r['rounds']} "
            f"interleaved round(s). The server's default batch is "
            f"`IMAGE_SEARCH_REEMBED_BATCH={r['default_batch']}`.{tower}",
            table,
            "Pipeline / bare: the re-embedding's rate over the bare model's (1.00x: the "
            "machinery costs nothing over the model). The last column splits the pipeline's "
            "seconds (median run): reading the originals from the store, the model call "
            "(decoding included), SQLite (the batches to do, storing the vectors), and the "
            "rest (bookkeeping; the switch is its own column). The tiny model is almost free, "
            "so its rows show the machinery's own cost; the real-sized rows show what a model "
            "change costs.",
            *_users_markdown(r),
            f"Load average (1/5/15 min): {loads}.",
        ]
    )


def _users_markdown(r: dict[str, Any]) -> list[str]:
    measured = [m for m in r["models"] if "users" in m]
    if not measured:
        return []
    rows = []
    for m in measured:
        u = m["users"]
        rows.append([m["label"], "none running", "—", fmt(u["alone_s"] * 1000, 0), "—", "—"])
        for kind, setting in (
            ("idle", "IMAGE_SEARCH_REEMBED_BATCH"),
            ("busy", "IMAGE_SEARCH_REEMBED_BUSY_BATCH"),
        ):
            k = u[kind]
            rows.append(
                [
                    m["label"],
                    f"`{setting}`={k['batch']}",
                    fmt(k["images_per_s"], 1),
                    fmt(k["user_p50_s"] * 1000, 0),
                    fmt(k["user_p90_s"] * 1000, 0),
                    fmt(k["user_max_s"] * 1000, 0),
                ]
            )
    table = md_table(
        [
            "model",
            "re-embedding batch",
            "re-embedding, images/s",
            "user call p50 (ms)",
            "p90 (ms)",
            "max (ms)",
        ],
        rows,
    )
    return [
        "### A user during re-embedding",
        f"A user embeds one image (a search by image, an upload) every {USER_GAP_S} s through "
        "the same model while the catalog is re-embedded, at the server's batch size when no "
        "one searches or uploads and at the one it switches to while someone does (the "
        "VectorIndex saw a search or upload in the last "
        f"{defaults.IMAGE_SEARCH_REEMBED_BUSY_WINDOW_S:.0f} s). The model runs one call at a "
        "time (its lock here, the replica's queue in the server), so a user's call waits for "
        "the batch in progress. Medians over the rounds of each run's p50, p90 and max.",
        table,
    ]


def run(ctx: Context, real_models: Path | None = None) -> Section:
    """The section: the tiny stand-in and the real-sized ViT-B-32 image tower."""
    from bench.real_models import build_real_clip

    started = time.perf_counter()
    root = real_models or ctx.subdir("real-models")
    print(f"  building the real-sized CLIP into {root} ...", flush=True)
    real = build_real_clip(root)
    n = 200 if ctx.quick else 500
    result = run_all(
        ctx.work,
        ctx.models / "clip-multilingual",
        real,
        n,
        BATCHES,
        ctx.rounds,
        real_n=100 if ctx.quick else 200,  # about 10 images/s on 2 cores
    )
    return Section(
        "9. Re-embedding", markdown(result), {"results": result}, time.perf_counter() - started
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="images in the catalog")
    parser.add_argument("--real-n", type=int, default=None, help="images for --real (default n)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median)")
    parser.add_argument("--real", action="store_true", help="also the real-sized ViT-B-32")
    parser.add_argument(
        "--models", type=Path, default=None, help="tiny models already built (serve_app.tiny)"
    )
    parser.add_argument(
        "--real-models", type=Path, default=None, help="directory for the real-sized CLIP, kept"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory")
    args = parser.parse_args(argv)
    from bench.env import prepare_environment

    prepare_environment()
    batches = [int(v) for v in args.batches.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="reembed-models-", dir=args.work) as tmp:
        tiny = args.models / "clip-multilingual" if args.models else None
        if tiny is None:
            from serve_app.tiny.clip_multilingual import build_tiny_multilingual_clip

            tiny = build_tiny_multilingual_clip(Path(tmp) / "clip-multilingual")
        real = None
        if args.real:
            from bench.real_models import build_real_clip

            real = build_real_clip(args.real_models or Path(tmp))
        result = run_all(
            args.work or Path(tempfile.gettempdir()),
            tiny,
            real,
            args.n,
            batches,
            args.rounds,
            args.device,
            args.threads,
            args.seed,
            args.real_n,
        )
    print(markdown(result))


if __name__ == "__main__":
    main()
