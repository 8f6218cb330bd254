"""The multilingual default's tiny stand-in (serve_app/tiny/clip_multilingual.py) through the
production loader: open_clip's HFTextEncoder over XLM-RoBERTa and its HFTokenizer over an
XLM-R-style Unigram tokenizer, with Korean, Japanese and English text."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from core import defaults
from deployments.clip_model import ClipModel
from deployments.configs import ClipEmbedderConfig
from serve_app.deploy_configs import clip_embed_dim
from serve_app.settings import load_settings
from serve_app.tiny import build_tiny_multilingual_clip
from serve_app.tiny.clip_multilingual import MODEL_CFG, TEXT_TOWER

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ["고양이", "猫", "cat"]


@pytest.fixture(scope="module")
def clip_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "clip-multilingual"


@pytest.fixture(scope="module")
def model(clip_dir: Path) -> ClipModel:
    return ClipModel(ClipEmbedderConfig(model=f"local-dir:{clip_dir}", device="cpu"))


def _ids(model: ClipModel, text: str) -> list[int]:
    """The token ids of `text` without the padding."""
    pad = model.tokenizer.tokenizer.pad_token_id
    return [int(i) for i in model.tokenizer([text])[0] if int(i) != pad]


# --- the default ---------------------------------------------------------------------------


def test_the_default_is_the_multilingual_model_with_an_hf_text_tower() -> None:
    import open_clip

    assert (defaults.CLIP_MODEL, defaults.CLIP_PRETRAINED) == (
        "xlm-roberta-base-ViT-B-32",
        "laion5b_s13b_b90k",
    )
    assert open_clip.get_pretrained_cfg(defaults.CLIP_MODEL, defaults.CLIP_PRETRAINED)
    text_cfg = open_clip.get_model_config(defaults.CLIP_MODEL)["text_cfg"]
    assert text_cfg["hf_model_name"] == text_cfg["hf_tokenizer_name"] == TEXT_TOWER
    # the stand-in keeps the production text config as it is
    assert MODEL_CFG["text_cfg"] == text_cfg


def test_embed_dim_is_read_for_the_default_and_the_stand_in(clip_dir: Path) -> None:
    assert clip_embed_dim(load_settings(None)) == 512
    local = load_settings(None, {"CLIP_MODEL": f"local-dir:{clip_dir}"})
    assert clip_embed_dim(local) == MODEL_CFG["embed_dim"] == 32


# --- the stand-in --------------------------------------------------------------------------


def test_builder_writes_a_complete_directory_and_is_idempotent(clip_dir: Path) -> None:
    names = {p.relative_to(clip_dir).as_posix() for p in clip_dir.rglob("*") if p.is_file()}
    assert {
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        f"{TEXT_TOWER}/config.json",
    } <= names
    text = json.loads((clip_dir / TEXT_TOWER / "config.json").read_text("utf-8"))
    assert text["model_type"] == "xlm-roberta" and text["pad_token_id"] == 1
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in clip_dir.rglob("*.*")}
    assert build_tiny_multilingual_clip(clip_dir) == clip_dir
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in clip_dir.rglob("*.*")} == before
    assert sum(p.stat().st_size for p in clip_dir.rglob("*") if p.is_file()) < 5 * 2**20


def test_builder_is_deterministic(tmp_path: Path, clip_dir: Path) -> None:
    again = build_tiny_multilingual_clip(tmp_path / "clip-multilingual", seed=0)
    for name in ("open_clip_model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (clip_dir / name).read_bytes(), name


def test_loads_through_open_clips_hf_text_tower_and_tokenizer(model: ClipModel) -> None:
    from open_clip.hf_model import HFTextEncoder
    from open_clip.tokenizer import HFTokenizer

    assert isinstance(model.model.text, HFTextEncoder)
    assert isinstance(model.tokenizer, HFTokenizer)
    assert type(model.tokenizer.tokenizer).__name__ == "XLMRobertaTokenizer"
    special = model.tokenizer.tokenizer
    assert (special.bos_token_id, special.pad_token_id, special.eos_token_id) == (0, 1, 2)
    assert special.unk_token_id == 3
    assert model.dim == 32


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
    assert loaded.embed_texts(["오프라인"]).shape == (1, loaded.dim)


# --- Korean, Japanese and English through the real tokenizer path --------------------------


def test_korean_japanese_and_english_queries_embed_as_unit_vectors(model: ClipModel) -> None:
    vectors = model.embed_texts(QUERIES)
    assert vectors.shape == (3, model.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len({vector.tobytes() for vector in vectors}) == 3
    # the same text, alone or in a batch, embeds the same
    np.testing.assert_allclose(model.embed_texts(["고양이"])[0], vectors[0], atol=1e-5)


def test_korean_and_japanese_text_gets_real_ids_not_unk(model: ClipModel) -> None:
    unk = model.tokenizer.tokenizer.unk_token_id
    texts = [
        "고양이",
        "소파 위에서 자고 있는 고양이",
        "한국어 검색어는 사전에 없는 음절도 씁니다",  # syllables outside the corpus
        "猫",
        "ソファの上で寝ている猫",
        "ねこ カタカナ",
        "a cat on a sofa",
    ]
    for text in texts:
        ids = _ids(model, text)
        assert ids[0] == 0 and ids[-1] == 2, text  # <s> ... </s>
        assert len(ids) > 2 and unk not in ids, (text, ids)


@pytest.mark.parametrize("text", ["고양이", "소파 위의 고양이", "ねこ ガギグ", "café"])
def test_decomposed_text_is_the_same_query_as_composed(model: ClipModel, text: str) -> None:
    """Hangul as separate jamo (NFD: macOS file names, some PDFs) and kana with a separate
    voicing mark search the same as their composed forms: open_clip cleans every text with
    ftfy (NFC) before the tokenizer, whose own normalizer the stand-in does not have."""
    composed, decomposed = (unicodedata.normalize(form, text) for form in ("NFC", "NFD"))
    assert composed != decomposed
    vectors = model.embed_texts([composed, decomposed])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


def test_different_scripts_give_different_token_sequences(model: ClipModel) -> None:
    sequences = {text: tuple(_ids(model, text)) for text in QUERIES + ["ねこ", "네코"]}
    assert len(set(sequences.values())) == len(sequences)
    assert set(sequences["고양이"][1:-1]).isdisjoint(sequences["猫"][1:-1])


def test_long_korean_text_is_truncated_to_the_context_length(model: ClipModel) -> None:
    long_text = "소파 위에서 자고 있는 고양이 " * 60
    tokens = model.tokenizer([long_text, "고양이"])
    assert tokens.shape == (2, 77)
    assert int(tokens[0, 0]) == 0 and int(tokens[0, -1]) == 2  # cut, still closed by </s>
    assert 1 not in tokens[0].tolist()  # filled to the end: no padding
    assert model.embed_texts([long_text]).shape == (1, model.dim)


# --- the rehearsal tier's hub cache --------------------------------------------------------

_LOAD_DEFAULT = """
import json
from deployments.clip_model import ClipModel
from deployments.configs import ClipEmbedderConfig
model = ClipModel(ClipEmbedderConfig(device="cpu"))
vectors = model.embed_texts(["고양이", "猫", "cat"])
unk = model.tokenizer.tokenizer.unk_token_id
ids = [int(i) for i in model.tokenizer(["고양이"])[0]]
print(json.dumps({"describe": model.describe(), "shape": list(vectors.shape),
                  "text": type(model.model.text).__name__, "unk_in_ids": unk in ids}))
"""


def test_the_default_loads_from_the_hub_cache_offline(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """ClipModel with the default config (CLIP_MODEL + CLIP_PRETRAINED) loads the stand-ins
    of `laion/...xlm-roberta-base...` and `xlm-roberta-base` with HF_HUB_OFFLINE=1, in a
    fresh process (huggingface_hub reads HF_HOME when it is imported)."""
    from serve_app.tiny import hub_cache

    home = tmp_path_factory.mktemp("hf_home_clip")
    hub_cache.build_hub_cache(home, only=["clip", "clip-text"])
    assert set(hub_cache.hub_cache_files(home)) == {
        "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k",
        TEXT_TOWER,
    }
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_DEFAULT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["describe"]["model"] == defaults.CLIP_MODEL
    assert report["describe"]["pretrained"] == defaults.CLIP_PRETRAINED
    assert report["describe"]["dim"] == "512" and report["shape"] == [3, 512]
    assert report["text"] == "HFTextEncoder" and not report["unk_in_ids"]
