"""A Hugging Face hub cache holding stand-ins for the production defaults, for rehearsals.

`build_hub_cache(hf_home)` writes, under `<hf_home>/hub`, the repositories the production
profile (`serve_config.yaml` with no model settings) downloads, in the layout
`huggingface_hub` itself writes (`models--<org>--<name>/{blobs,refs/main,snapshots/<commit>}`,
each snapshot file a relative symlink to its blob named by the file's sha256). A server
started with `HF_HOME=<hf_home> HF_HUB_OFFLINE=1` then loads every default model id through
exactly the code and libraries production uses, with no hub:

- `stabilityai/sd-turbo` (IMAGE_MODEL): a tiny diffusers StableDiffusionPipeline with
  sd-turbo's component layout, scheduler (Euler, trailing spacing) and real tokenizer files
  (the CLIP BPE vocabulary open_clip ships, which is sd-turbo's), at tiny sizes;
- the open_clip weights of CLIP_MODEL + CLIP_PRETRAINED (`xlm-roberta-base-ViT-B-32` /
  `laion5b_s13b_b90k`: `laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k`,
  `open_clip_model.safetensors`): the image tower is open_clip's built-in one, so a full-size
  random ViT-B-32 (fp16); the text tower is the size the `xlm-roberta-base` stand-in's
  config says;
- `xlm-roberta-base`, the Hugging Face repo open_clip reads that text tower's config and the
  tokenizer from (`hf_model_name` / `hf_tokenizer_name`): a tiny XLM-RoBERTa config.json and
  an XLM-R-style Unigram tokenizer (serve_app/tiny/clip_multilingual.py), so the production
  loader runs the real `HFTextEncoder` and `HFTokenizer` code on Korean text too;
- `SWivid/F5-TTS` (VOICE_CHECKPOINT `F5TTS_v1_Base/model_1250000.safetensors` and its
  `vocab.txt`): the architecture comes from f5-tts's packaged F5TTS_v1_Base config, so a
  full-size random DiT (fp16) for the vocabulary f5-tts ships (which the loader uses);
- `charactr/vocos-mel-24khz` (VOICE_VOCODER) and `openai/whisper-large-v3-turbo`
  (VOICE_ASR_MODEL): tiny models whose configs are read from the files.

The repo ids and file names are derived from the defaults (`core.defaults`) and open_clip's
pretrained table, so a changed default changes the cache (or fails here, loudly). Each
repository is written once: one whose `refs/main` names a complete snapshot is left alone.
Weights are noise; the point is that every path, id and loader is the production one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from core import defaults

WeightsWriter = Callable[[Path, int], dict[str, Path]]  # scratch dir, seed -> {repo path: file}

# Full-size random weights are stored in half precision; every loader casts them to the dtype
# it runs in (float32 on the CPU).
WEIGHTS_DTYPE = "float16"
CLIP_SAFE_WEIGHTS = "open_clip_model.safetensors"  # what open_clip asks the hub for first
CLIP_CONFIG = "open_clip_config.json"


@dataclass(frozen=True)
class StandIn:
    """One hub repository of the cache: its id and the writer of its files."""

    repo_id: str
    write: WeightsWriter
    what: str  # for the CLI and the logs


def repo_commit(repo_id: str) -> str:
    """The snapshot's commit hash: fixed per repository (40 hex digits, as git's)."""
    return hashlib.sha1(f"common-ai-server stand-in {repo_id}".encode()).hexdigest()


def repo_dir(hf_home: Path, repo_id: str) -> Path:
    """`<hf_home>/hub/models--<org>--<name>`, where `huggingface_hub` caches the repo."""
    from huggingface_hub.file_download import repo_folder_name

    return Path(hf_home) / "hub" / repo_folder_name(repo_id=repo_id, repo_type="model")


def snapshot_dir(hf_home: Path, repo_id: str) -> Path:
    """The directory holding the repo's files (`snapshots/<commit>`)."""
    return repo_dir(hf_home, repo_id) / "snapshots" / repo_commit(repo_id)


# --- the stand-ins ---------------------------------------------------------------------------


def clip_hub_file(
    model: str = defaults.CLIP_MODEL, tag: str | None = defaults.CLIP_PRETRAINED
) -> tuple[str, str]:
    """(repo id, file name) open_clip downloads for `model` + pretrained `tag`. A tag entry
    naming no file means open_clip's default, whose safetensors twin it asks for first."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag or "")
    hub = cfg.get("hf_hub", "") if cfg else ""
    if not hub:
        raise ValueError(f"open_clip has no hub weights for {model!r} / {tag!r}")
    repo_id, filename = os.path.split(hub)
    if filename.endswith((".bin", ".pth")):
        filename = filename[:-4] + ".safetensors"
    return repo_id, filename or CLIP_SAFE_WEIGHTS


def _write_sd_turbo(scratch: Path, seed: int) -> dict[str, Path]:
    """A tiny pipeline in sd-turbo's layout: the tiny networks (with the real 49408-token
    text embedding), sd-turbo's tokenizer files and its Euler scheduler."""
    from diffusers import EulerDiscreteScheduler

    from serve_app.tiny.diffusion import TINY_SIZES, PipelineSizes, build_tiny_diffusion_pipeline

    sizes = PipelineSizes(
        # sd-turbo's latent size (64: 512 px) and its VAE's four blocks (a latent pixel is 8x8
        # image pixels), narrow: with two blocks a 512 px image would be a 256 px latent.
        unet={**TINY_SIZES.unet, "sample_size": 64},
        vae={
            **TINY_SIZES.vae,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (8, 16, 32, 32),
            "norm_num_groups": 8,
            "sample_size": 512,
        },
        text_encoder={**TINY_SIZES.text_encoder, "vocab_size": CLIP_VOCAB_SIZE},
    )
    root = build_tiny_diffusion_pipeline(scratch / "pipeline", seed, sizes=sizes)
    tokenizer = root / "tokenizer"
    shutil.rmtree(tokenizer)
    write_clip_tokenizer(tokenizer)
    # sd-turbo's text encoder config keeps CLIP's legacy ids (eos 2: pool at the highest id).
    _update_json(
        root / "text_encoder" / "config.json",
        {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="trailing",
    )
    shutil.rmtree(root / "scheduler")
    scheduler.save_config(str(root / "scheduler"))  # type: ignore[attr-defined]
    _update_json(root / "model_index.json", {"scheduler": ["diffusers", "EulerDiscreteScheduler"]})
    return _tree(root)


CLIP_VOCAB_SIZE = 49408
CLIP_MERGES = CLIP_VOCAB_SIZE - 256 * 2 - 2  # 48894: open_clip's SimpleTokenizer reads as many


def write_clip_tokenizer(directory: Path) -> None:
    """Write the CLIP tokenizer files of sd-turbo (a `CLIPTokenizer`: vocab.json, merges.txt,
    tokenizer_config.json, special_tokens_map.json) from the BPE merges open_clip ships: the
    vocabulary is built from them the way open_clip's SimpleTokenizer builds it."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe = files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(bpe).decode("utf-8").split("\n")[1 : CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"open_clip's BPE file gave {len(tokens)} tokens, not {CLIP_VOCAB_SIZE}")
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), "utf-8"
    )
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "!",
        "unk_token": "<|endoftext|>",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2), "utf-8")
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")


def clip_model_config(model: str = defaults.CLIP_MODEL) -> dict[str, Any]:
    """open_clip's built-in config of `model` (a copy)."""
    import open_clip

    model_cfg = open_clip.get_model_config(model)
    if model_cfg is None:
        raise RuntimeError(f"open_clip has no built-in {model} config")
    return dict(model_cfg)


def clip_text_repo(model: str = defaults.CLIP_MODEL) -> str | None:
    """The hub repo of `model`'s Hugging Face text tower (config and tokenizer), or None for
    open_clip's own text tower. Only the XLM-R family has a stand-in: another fails here."""
    from serve_app.tiny.clip_multilingual import TEXT_TOWER

    text_cfg = clip_model_config(model)["text_cfg"]
    names = {text_cfg.get("hf_model_name"), text_cfg.get("hf_tokenizer_name")} - {None}
    if not names:
        return None
    if names != {TEXT_TOWER}:
        raise ValueError(f"{model}: no stand-in for the text tower / tokenizer {sorted(names)}")
    return TEXT_TOWER


def _write_clip(scratch: Path, seed: int) -> dict[str, Path]:
    """open_clip's image tower of CLIP_MODEL, full size, random, fp16, with the text tower
    (open_clip's own at full size, or the XLM-R stand-in's) and the config as the laion repos
    have it."""
    from serve_app.tiny.clip import PREPROCESS_CFG, build_tiny_clip
    from serve_app.tiny.clip_multilingual import (
        save_multilingual_clip,
        write_xlmr_config,
        write_xlmr_tokenizer,
    )

    model_cfg = clip_model_config()
    preprocess = {**PREPROCESS_CFG, "size": model_cfg["vision_cfg"]["image_size"]}
    root = scratch / "clip"
    if clip_text_repo() is None:
        build_tiny_clip(
            root, seed, model_cfg=model_cfg, preprocess_cfg=preprocess, dtype=WEIGHTS_DTYPE
        )
    else:
        # The text tower is built from the same config.json the xlm-roberta-base stand-in holds.
        text = scratch / "text"
        write_xlmr_config(text, write_xlmr_tokenizer(text))
        root.mkdir()
        save_multilingual_clip(
            root,
            seed,
            model_cfg=model_cfg,
            preprocess_cfg=preprocess,
            text_config_dir=text,
            dtype=WEIGHTS_DTYPE,
        )
    _, weights = clip_hub_file()
    return {weights: root / CLIP_SAFE_WEIGHTS, CLIP_CONFIG: root / CLIP_CONFIG}


def _write_clip_text(scratch: Path, seed: int) -> dict[str, Path]:
    """The `xlm-roberta-base` repo: a tiny XLM-RoBERTa config.json and the tokenizer files."""
    from serve_app.tiny.clip_multilingual import write_xlmr_config, write_xlmr_tokenizer

    root = scratch / "xlm-roberta-base"
    write_xlmr_config(root, write_xlmr_tokenizer(root))
    return _tree(root)


def f5_vocab_path() -> Path:
    """The vocab.txt f5-tts ships, which its loader (and ours, with no VOICE_VOCAB) uses."""
    return Path(str(files("f5_tts").joinpath("infer/examples/vocab.txt")))


def f5_vocab_tokens() -> list[str]:
    """The packaged vocabulary, read line by line as f5-tts's `get_tokenizer` reads it."""
    with open(f5_vocab_path(), encoding="utf-8") as f:
        return [line[:-1] for line in f]


def f5_packaged_arch(name: str = defaults.VOICE_MODEL_CONFIG) -> dict[str, Any]:
    """`model.arch` of an f5-tts packaged config (F5TTS_v1_Base by default)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(files("f5_tts") / "configs" / f"{name}.yaml"))
    arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
    if not isinstance(arch, dict):
        raise RuntimeError(f"{name}: model.arch is not a mapping")
    return {str(key): value for key, value in arch.items()}


def _write_f5tts(scratch: Path, seed: int) -> dict[str, Path]:
    """F5TTS_v1_Base, full size, random, fp16, for the packaged vocabulary; its vocab.txt."""
    from deployments.model_loading import split_hf_path
    from serve_app.tiny.f5tts import F5_CHECKPOINT_FILE, F5_VOCAB_FILE, build_tiny_f5tts

    _, checkpoint = split_hf_path(defaults.VOICE_CHECKPOINT)
    root = build_tiny_f5tts(
        scratch / "f5tts",
        seed,
        arch=f5_packaged_arch(),
        tokens=f5_vocab_tokens(),
        name=defaults.VOICE_MODEL_CONFIG,
        dtype=WEIGHTS_DTYPE,
    )
    folder = checkpoint.rsplit("/", 1)[0] + "/" if "/" in checkpoint else ""
    vocab = scratch / F5_VOCAB_FILE  # the packaged file itself, byte for byte
    shutil.copyfile(f5_vocab_path(), vocab)
    return {checkpoint: root / F5_CHECKPOINT_FILE, folder + F5_VOCAB_FILE: vocab}


def _write_vocos(scratch: Path, seed: int) -> dict[str, Path]:
    from serve_app.tiny.f5tts import build_tiny_vocos

    return _tree(build_tiny_vocos(scratch / "vocos", seed))


def _write_whisper(scratch: Path, seed: int) -> dict[str, Path]:
    from serve_app.tiny.f5tts import build_tiny_whisper

    return _tree(build_tiny_whisper(scratch / "whisper", seed))


def stand_ins() -> dict[str, StandIn]:
    """Short name -> the repository standing in for that default model."""
    from deployments.model_loading import split_hf_path

    return {
        "sd-turbo": StandIn(
            defaults.IMAGE_MODEL,
            _write_sd_turbo,
            "tiny diffusers pipeline, sd-turbo layout and tokenizer",
        ),
        "clip": StandIn(
            clip_hub_file()[0],
            _write_clip,
            f"open_clip {defaults.CLIP_MODEL}, full-size image tower, random, {WEIGHTS_DTYPE}",
        ),
        **_clip_text_stand_in(),
        "f5tts": StandIn(
            split_hf_path(defaults.VOICE_CHECKPOINT)[0],
            _write_f5tts,
            f"{defaults.VOICE_MODEL_CONFIG}, full size, random, {WEIGHTS_DTYPE}",
        ),
        "vocos": StandIn(defaults.VOICE_VOCODER, _write_vocos, "tiny Vocos"),
        "whisper": StandIn(defaults.VOICE_ASR_MODEL, _write_whisper, "tiny Whisper"),
    }


def _clip_text_stand_in() -> dict[str, StandIn]:
    repo_id = clip_text_repo()
    if repo_id is None:
        return {}
    what = "tiny XLM-RoBERTa config and XLM-R-style tokenizer (CLIP text tower)"
    return {"clip-text": StandIn(repo_id, _write_clip_text, what)}


# --- the cache layout ------------------------------------------------------------------------


def build_hub_cache(hf_home: Path, seed: int = 0, only: Iterable[str] | None = None) -> None:
    """Write every stand-in (or the `only` ones, by short name) into `<hf_home>/hub`.

    A repository whose `refs/main` already names a complete snapshot is left as it is, so a
    second call costs nothing; a half-written one is finished. Several minutes on two cores
    the first time (the full-size CLIP and F5-TTS), about 1 GB on disk.
    """
    hf_home = Path(hf_home).expanduser().absolute()
    repos = stand_ins()
    names = list(repos) if only is None else list(only)
    unknown = sorted(set(names) - set(repos))
    if unknown:
        raise KeyError(f"unknown stand-in(s) {unknown}; known: {sorted(repos)}")
    (hf_home / "hub").mkdir(parents=True, exist_ok=True)
    for name in names:
        repo = repos[name]
        if _complete(hf_home, repo.repo_id):
            continue
        scratch = Path(tempfile.mkdtemp(prefix=f".stand-in-{name}-", dir=hf_home))
        try:
            _install(hf_home, repo.repo_id, repo.write(scratch, seed))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def hub_cache_files(hf_home: Path) -> dict[str, dict[str, int]]:
    """Repo id -> {file in the repo: size in bytes} of every stand-in present under hf_home."""
    found: dict[str, dict[str, int]] = {}
    for repo in stand_ins().values():
        snapshot = snapshot_dir(hf_home, repo.repo_id)
        if _complete(hf_home, repo.repo_id):
            found[repo.repo_id] = {
                path.relative_to(snapshot).as_posix(): path.stat().st_size
                for path in sorted(snapshot.rglob("*"))
                if path.is_file()
            }
    return found


def _install(hf_home: Path, repo_id: str, contents: dict[str, Path]) -> None:
    """Move `contents` (repo path -> file) into the repo's blobs, link them from a new
    snapshot directory, then point `refs/main` at it (last, so a crash leaves no ref)."""
    repo = repo_dir(hf_home, repo_id)
    commit = repo_commit(repo_id)
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "snapshots").mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{commit}-", dir=repo / "snapshots"))
    try:
        for name, source in sorted(contents.items()):
            blob = blobs / _sha256(source)
            if not blob.exists():
                shutil.move(str(source), blob)
                blob.chmod(0o644)
            link = staging / name
            link.parent.mkdir(parents=True, exist_ok=True)
            # Relative, as huggingface_hub links them: the cache may be moved as a whole.
            target = os.path.relpath(blob, start=(repo / "snapshots" / commit / name).parent)
            link.symlink_to(target)
        staging.chmod(0o755)
        final = repo / "snapshots" / commit
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    (repo / "refs" / "main.tmp").write_text(commit, "utf-8")  # no newline, as the hub writes it
    os.replace(repo / "refs" / "main.tmp", repo / "refs" / "main")


def _complete(hf_home: Path, repo_id: str) -> bool:
    """Whether refs/main names this stand-in's snapshot and every link there resolves."""
    ref = repo_dir(hf_home, repo_id) / "refs" / "main"
    snapshot = snapshot_dir(hf_home, repo_id)
    if not ref.is_file() or ref.read_text("utf-8").strip() != repo_commit(repo_id):
        return False
    links = [path for path in snapshot.rglob("*") if path.is_symlink()]
    return bool(links) and all(path.is_file() for path in links)


def _tree(root: Path) -> dict[str, Path]:
    """Every file under `root`, by its path relative to it."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _update_json(path: Path, changes: dict[str, Any]) -> None:
    data = json.loads(path.read_text("utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", "utf-8")
