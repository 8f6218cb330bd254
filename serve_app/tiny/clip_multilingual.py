"""Tiny, randomly initialised stand-in for open_clip's `xlm-roberta-base-ViT-B-32`, offline.

Owns `build_tiny_multilingual_clip` and the XLM-R-style tokenizer it ships. The production
default (docs/search-models.md) is a ViT image tower with a Hugging Face XLM-RoBERTa text
tower and XLM-R's SentencePiece (Unigram) tokenizer; this stand-in has the same three parts
at tiny sizes, loaded by the same code:

- `open_clip_config.json`: open_clip's own `xlm-roberta-base-ViT-B-32` text config
  (`hf_model_name` / `hf_tokenizer_name` = `xlm-roberta-base`, mean pooling), a tiny ViT;
- `xlm-roberta-base/config.json`: a tiny `XLMRobertaConfig` for open_clip's `HFTextEncoder`
  (`ClipModel` resolves a text tower named by a hub id to this sub-directory when it exists);
- `tokenizer.json` + `tokenizer_config.json`: an `XLMRobertaTokenizer` (fast, `tokenizers`
  backend) over a Unigram vocabulary trained here on a small English/Korean/Japanese corpus,
  with XLM-R's special tokens and ids (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>`
  last) and every Hangul syllable, kana and ASCII character in its alphabet, so no Korean or
  Japanese-kana text maps to `<unk>`; open_clip's `HFTokenizer` reads them from the directory;
- `open_clip_model.safetensors`: the weights (about 2 MB).

It lives at its own path (`.models/clip-multilingual`), apart from the English tiny model
(`serve_app/tiny/clip.py`), so vectors of one are never taken for the other's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serve_app.tiny.atomic import build_atomic
from serve_app.tiny.clip import CONFIG_FILE, PREPROCESS_CFG, WEIGHTS_FILE

TEXT_TOWER = "xlm-roberta-base"  # open_clip's hf_model_name / hf_tokenizer_name for the family
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3, as in XLM-R; <mask> is last
MASK_TOKEN = "<mask>"
MODEL_MAX_LENGTH = 512  # XLM-R's; open_clip truncates to its context length (77) anyway

# Text the Unigram vocabulary is counted in: enough for multi-character pieces in each
# script. Every Hangul syllable, kana and printable ASCII character is in the alphabet
# regardless (`_alphabet`), so text outside this corpus still gets real ids.
CORPUS: tuple[str, ...] = (
    "a cat sleeping on a sofa",
    "a dog running on the beach",
    "a red car parked in front of a house",
    "two people walking in the park at sunset",
    "a bowl of noodles on a wooden table",
    "mountains covered with snow under a blue sky",
    "a photo of a cat",
    "a photo of a dog",
    "the city at night with bright lights",
    "children playing football in the school yard",
    "고양이",
    "강아지",
    "소파 위에서 자고 있는 고양이",
    "해변을 달리는 강아지",
    "집 앞에 주차된 빨간 자동차",
    "해질녘 공원을 걷는 두 사람",
    "나무 탁자 위의 국수 한 그릇",
    "파란 하늘 아래 눈 덮인 산",
    "고양이 사진",
    "강아지 사진",
    "밝은 불빛이 가득한 밤의 도시",
    "학교 운동장에서 축구를 하는 아이들",
    "猫",
    "犬",
    "ソファの上で寝ている猫",
    "浜辺を走る犬",
    "家の前に止まっている赤い車",
    "夕暮れの公園を歩く二人",
    "木のテーブルの上のラーメン",
    "青空の下の雪に覆われた山",
    "猫の写真",
    "犬の写真",
    "明るい光で満ちた夜の街",
    "校庭でサッカーをする子供たち",
)

CORPUS_WORDS = frozenset(word for line in CORPUS for word in line.split())

# The text tower: XLM-RoBERTa's architecture (and special-token ids) at tiny sizes.
XLMR_CFG: dict[str, Any] = {
    "architectures": ["XLMRobertaForMaskedLM"],
    "model_type": "xlm-roberta",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-05,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
    "position_embedding_type": "absolute",
}
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2},
    # open_clip's xlm-roberta-base-ViT-B-32 text config, verbatim
    "text_cfg": {
        "hf_model_name": TEXT_TOWER,
        "hf_tokenizer_name": TEXT_TOWER,
        "hf_pooler_type": "mean_pooler",
    },
}


def _alphabet() -> list[str]:
    """Characters every vocabulary holds: printable ASCII, Hangul syllables, kana, and the
    corpus's own characters (its kanji)."""
    chars = {chr(c) for c in range(0x21, 0x7F)}
    chars |= {chr(c) for c in range(0xAC00, 0xD7A4)}  # Hangul syllables
    chars |= {chr(c) for c in range(0x3041, 0x3097)}  # Hiragana
    chars |= {chr(c) for c in range(0x30A1, 0x30FB)}  # Katakana
    chars |= {ch for line in CORPUS for ch in line if not ch.isspace()}
    return sorted(chars)


def unigram_vocab() -> list[tuple[str, float]]:
    """(piece, log-probability) in XLM-R's order: the special tokens, the pieces, `<mask>`.

    The pieces are counted in `CORPUS` the way SentencePiece sees text (words split on
    whitespace, `▁` marking a word's start): every word, and every 2-6 character piece of a
    word seen at least twice, scored by its log frequency; every character of `_alphabet`
    is a piece too, scored below them all, so unseen text splits into characters, never
    `<unk>`. Counted rather than trained (`tokenizers`' UnigramTrainer orders ties by hash,
    so its ids change from run to run), so every build gives the same ids.
    """
    import math
    from collections import Counter

    counts: Counter[str] = Counter()
    for line in CORPUS:
        for word in line.split():
            marked = "▁" + word
            counts[marked] += 1
            for size in range(2, min(6, len(marked)) + 1):
                for start in range(len(marked) - size + 1):
                    counts[marked[start : start + size]] += 1
    kept = {piece: n for piece, n in counts.items() if n >= 2 or piece[1:] in CORPUS_WORDS}
    total = sum(kept.values())
    scores = {piece: round(math.log(n / total), 4) for piece, n in kept.items()}
    floor = min(scores.values()) - 1.0
    scores.setdefault("▁", floor)
    for char in _alphabet():
        scores.setdefault(char, floor)
    ordered = sorted((-score, piece) for piece, score in scores.items())
    vocab = [(token, 0.0) for token in SPECIAL_TOKENS]
    vocab += [(piece, -negative) for negative, piece in ordered]
    vocab.append((MASK_TOKEN, 0.0))
    return vocab


def write_xlmr_tokenizer(directory: Path) -> int:
    """Write an `XLMRobertaTokenizer` (tokenizer.json, tokenizer_config.json, ...) into
    `directory`; return its vocabulary size."""
    from transformers import XLMRobertaTokenizer

    tokenizer = XLMRobertaTokenizer(vocab=unigram_vocab(), model_max_length=MODEL_MAX_LENGTH)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return len(tokenizer)


def write_xlmr_config(directory: Path, vocab_size: int) -> None:
    """Write the tiny XLM-RoBERTa `config.json` for a tokenizer of `vocab_size` tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {**XLMR_CFG, "vocab_size": vocab_size}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")


def make_model(model_cfg: dict[str, Any], text_config_dir: Path) -> Any:
    """An open_clip `CustomTextCLIP` of `model_cfg` whose HF text tower is built from the
    config in `text_config_dir` (randomly initialised, no weights read)."""
    import copy

    from open_clip.model import CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    cfg["text_cfg"] = {
        **cfg["text_cfg"],
        "hf_model_name": str(text_config_dir),
        "hf_model_pretrained": False,
    }
    return CustomTextCLIP(**cfg)


def save_multilingual_clip(
    target: Path,
    seed: int,
    *,
    model_cfg: dict[str, Any] = MODEL_CFG,
    preprocess_cfg: dict[str, Any] = PREPROCESS_CFG,
    text_config_dir: Path | None = None,
    dtype: str | None = None,
) -> None:
    """Build the model deterministically and write weights + open_clip config into `target`.

    With no `text_config_dir`, the tokenizer and the text tower's config go into `target`
    too (a complete local directory); otherwise the text tower is built from the config
    already written there (the hub cache's `xlm-roberta-base` stand-in).
    """
    import torch
    from safetensors.torch import save_file

    if text_config_dir is None:
        text_config_dir = target / TEXT_TOWER
        write_xlmr_config(text_config_dir, write_xlmr_tokenizer(target))
    torch.manual_seed(seed)
    model = make_model(model_cfg, text_config_dir)
    if dtype is not None:
        model = model.to(dtype=getattr(torch, dtype))
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(target / WEIGHTS_FILE))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", "utf-8")


def build_tiny_multilingual_clip(out_dir: Path, seed: int = 0) -> Path:
    """Create the tiny multilingual open_clip model in `out_dir` (idempotent, atomic: see
    `serve_app.tiny.atomic.build_atomic`) and return its path."""
    return build_atomic(out_dir, CONFIG_FILE, "open_clip model", save_multilingual_clip, seed)
