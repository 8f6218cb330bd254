"""Tiny, randomly initialised voice-cloning models (F5-TTS, Vocos, Whisper) for offline tests.

Owns three builders, each writing one model directory (a few MB, built in about a second)
that the production loaders read with no hub access:

- `build_tiny_f5tts`: `model.yaml` (an f5-tts model config: backbone, arch, mel_spec),
  `model.safetensors` (the `CFM` state dict, loadable by `f5_tts.infer.utils_infer.load_model`)
  and `vocab.txt` (space first, then printable ASCII, then every Hangul syllable).
- `build_tiny_vocos`: exactly `config.yaml` + `pytorch_model.bin`, what
  `load_vocoder(is_local=True, local_path=dir)` wants (100 mel bins, 24 kHz, hop 256).
- `build_tiny_whisper`: a `WhisperForConditionalGeneration` directory with a hand-made
  byte-level tokenizer, a `WhisperFeatureExtractor` and a `GenerationConfig` built directly,
  loadable by `transformers.pipeline("automatic-speech-recognition", model=dir)`.

Each builder is idempotent (a directory holding its marker file is returned untouched) and
atomic (written into a temporary sibling, then renamed into place). Weights are noise.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from transformers.convert_slow_tokenizer import bytes_to_unicode

from serve_app.tiny.atomic import build_atomic

F5_CONFIG_FILE = "model.yaml"
F5_CHECKPOINT_FILE = "model.safetensors"
F5_VOCAB_FILE = "vocab.txt"
VOCOS_CONFIG_FILE = "config.yaml"
VOCOS_WEIGHTS_FILE = "pytorch_model.bin"
WHISPER_MARKER_FILE = "generation_config.json"

# Same mel front end as the real F5TTS_v1_Base + charactr/vocos-mel-24khz pair.
SAMPLE_RATE = 24000
N_MELS = 100
HOP_LENGTH = 256
N_FFT = 1024

# f5-tts config format (f5_tts/configs/*.yaml); VoiceClonerConfig.model_config_name may point
# at this file instead of naming a packaged config.
F5_MODEL_CFG: dict[str, Any] = {
    "model": {
        "name": "F5TTS_tiny",
        "tokenizer": "custom",
        "tokenizer_path": None,
        "backbone": "DiT",
        "arch": {
            "dim": 64,
            "depth": 2,
            "heads": 2,
            "ff_mult": 2,
            "text_dim": 32,
            "text_mask_padding": True,
            "qk_norm": None,
            "conv_layers": 2,
            "pe_attn_head": None,
            "attn_backend": "torch",
            "attn_mask_enabled": False,
            "checkpoint_activations": False,
        },
        "mel_spec": {
            "target_sample_rate": SAMPLE_RATE,
            "n_mel_channels": N_MELS,
            "hop_length": HOP_LENGTH,
            "win_length": N_FFT,
            "n_fft": N_FFT,
            "mel_spec_type": "vocos",
        },
        "vocoder": {"is_local": True, "local_path": None},
    }
}

VOCOS_CFG: dict[str, Any] = {
    "feature_extractor": {
        "class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
        "init_args": {
            "sample_rate": SAMPLE_RATE,
            "n_fft": N_FFT,
            "hop_length": HOP_LENGTH,
            "n_mels": N_MELS,
            "padding": "center",
        },
    },
    "backbone": {
        "class_path": "vocos.models.VocosBackbone",
        "init_args": {"input_channels": N_MELS, "dim": 32, "intermediate_dim": 64, "num_layers": 1},
    },
    "head": {
        "class_path": "vocos.heads.ISTFTHead",
        "init_args": {"dim": 32, "n_fft": N_FFT, "hop_length": HOP_LENGTH, "padding": "same"},
    },
}

# Whisper special tokens (the subset the ASR pipeline and `generate` look up).
WHISPER_LANGUAGES = ("en", "ko", "zh", "ja", "de", "fr", "es")
EOT = "<|endoftext|>"
SOT = "<|startoftranscript|>"
TRANSLATE = "<|translate|>"
TRANSCRIBE = "<|transcribe|>"
NO_TIMESTAMPS = "<|notimestamps|>"
WHISPER_SPECIALS = (
    EOT,
    SOT,
    *(f"<|{lang}|>" for lang in WHISPER_LANGUAGES),
    TRANSLATE,
    TRANSCRIBE,
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    NO_TIMESTAMPS,
)
_WHISPER_WORDS = ("hello", "world", "the", "and", "voice")


def f5_vocab_tokens() -> list[str]:
    """Tokens of the tiny vocab.txt: " " (index 0, also f5's unknown id), ASCII, Hangul."""
    ascii_tokens = [chr(c) for c in range(0x21, 0x7F)]
    hangul = [chr(c) for c in range(0xAC00, 0xD7A4)]  # every precomposed syllable
    return [" ", *ascii_tokens, *hangul]


def make_f5tts(arch: dict[str, Any], tokens: list[str]) -> Any:
    """An f5-tts `CFM` around a `DiT` of `arch` for the vocabulary `tokens`, randomly
    initialised on torch's current device, built exactly as
    `f5_tts.infer.utils_infer.load_model` builds the real model."""
    from f5_tts.model import CFM, DiT

    mel = F5_MODEL_CFG["model"]["mel_spec"]
    return CFM(
        transformer=DiT(**arch, text_num_embeds=len(tokens), mel_dim=N_MELS),
        mel_spec_kwargs={
            "n_fft": mel["n_fft"],
            "hop_length": mel["hop_length"],
            "win_length": mel["win_length"],
            "n_mel_channels": mel["n_mel_channels"],
            "target_sample_rate": mel["target_sample_rate"],
            "mel_spec_type": mel["mel_spec_type"],
        },
        vocab_char_map={t: i for i, t in enumerate(tokens)},
    )


def _write_f5tts(
    target: Path,
    seed: int,
    arch: dict[str, Any] | None = None,
    tokens: list[str] | None = None,
    name: str | None = None,
    dtype: str | None = None,
) -> None:
    """Write model.yaml, vocab.txt and model.safetensors of an F5-TTS into `target`: the tiny
    one by default, else a DiT of `arch` for the vocabulary `tokens`, called `name`, with
    its weights stored in `dtype` (e.g. "float16")."""
    import torch
    import yaml
    from safetensors.torch import save_file

    tokens = f5_vocab_tokens() if tokens is None else tokens
    model_cfg = F5_MODEL_CFG
    if arch is not None or name is not None:
        model_cfg = copy.deepcopy(F5_MODEL_CFG)
        model_cfg["model"]["arch"] = arch if arch is not None else model_cfg["model"]["arch"]
        model_cfg["model"]["name"] = name if name is not None else model_cfg["model"]["name"]
    (target / F5_VOCAB_FILE).write_text("".join(t + "\n" for t in tokens), "utf-8")
    (target / F5_CONFIG_FILE).write_text(yaml.safe_dump(model_cfg, sort_keys=False), "utf-8")

    torch.manual_seed(seed)
    model = make_f5tts(model_cfg["model"]["arch"], tokens)
    if dtype is not None:
        model = model.to(dtype=getattr(torch, dtype))
    state = {key: t.detach().contiguous() for key, t in model.state_dict().items()}
    save_file(state, str(target / F5_CHECKPOINT_FILE))


def vocos_config(dim: int, intermediate_dim: int, num_layers: int) -> dict[str, Any]:
    """`VOCOS_CFG` with another backbone (and ISTFT head) width and depth."""
    config = copy.deepcopy(VOCOS_CFG)
    config["backbone"]["init_args"].update(
        dim=dim, intermediate_dim=intermediate_dim, num_layers=num_layers
    )
    config["head"]["init_args"]["dim"] = dim
    return config


def _write_vocos(target: Path, seed: int, config: dict[str, Any] | None = None) -> None:
    """Write config.yaml + pytorch_model.bin of a Vocos vocoder into `target` (the tiny one
    unless `config`, a `VOCOS_CFG`-shaped dict, says otherwise)."""
    import torch
    import yaml
    from vocos import Vocos

    config_path = target / VOCOS_CONFIG_FILE
    config_path.write_text(
        yaml.safe_dump(VOCOS_CFG if config is None else config, sort_keys=False), "utf-8"
    )
    torch.manual_seed(seed)
    vocoder = Vocos.from_hparams(str(config_path))
    torch.save(vocoder.state_dict(), target / VOCOS_WEIGHTS_FILE)


def _whisper_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Byte-level vocabulary (256 symbols + a few whole-word merges, no `</w>`)."""
    byte_map = bytes_to_unicode()
    tokens: list[str] = [byte_map[b] for b in range(256)]
    merges: list[str] = []
    space = byte_map[ord(" ")]
    for word in _WHISPER_WORDS:
        for prefix in ("", space):
            parts = ([prefix] if prefix else []) + list(word)
            while len(parts) > 1:
                merge = f"{parts[0]} {parts[1]}"
                merged = parts[0] + parts[1]
                if merge not in merges:
                    merges.append(merge)
                if merged not in tokens:
                    tokens.append(merged)
                parts = [merged] + parts[2:]
    return {token: i for i, token in enumerate(tokens)}, merges


def _write_whisper(target: Path, seed: int) -> None:
    """Write a tiny Whisper model, tokenizer, feature extractor and generation config."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    from deployments.model_loading import quiet_progress_bars

    vocab, merges = _whisper_vocab_and_merges()
    scratch = Path(tempfile.mkdtemp(prefix="tokenizer-src-", dir=target))
    (scratch / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (scratch / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    tokenizer = WhisperTokenizer(
        vocab=str(scratch / "vocab.json"),
        merges=str(scratch / "merges.txt"),
        pad_token=EOT,  # as the real Whisper tokenizers: batching (chunked ASR) needs one
        additional_special_tokens=list(WHISPER_SPECIALS[1:]),
        model_max_length=448,
    )
    shutil.rmtree(scratch)
    ids: dict[str, int] = {}
    for token in WHISPER_SPECIALS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(token_id, int), (token, token_id)  # one token in, one id out
        ids[token] = token_id
    eot = ids[EOT]
    # Random weights favour special tokens, which decode to nothing: suppress them (as the
    # real models suppress some tokens) so the tiny model always "hears" some text.
    specials = sorted(set(ids.values()) - {eot})

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=ids[SOT],
        begin_suppress_tokens=[eot],  # the defaults name ids of the real 51k vocabulary
        suppress_tokens=specials,
    )
    model = WhisperForConditionalGeneration(config)
    # Built directly: GenerationConfig.from_model_config drops lang_to_id etc. on reload.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids[SOT],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_new_tokens=8,
        num_beams=1,
        do_sample=False,
        is_multilingual=True,
        lang_to_id={f"<|{lang}|>": ids[f"<|{lang}|>"] for lang in WHISPER_LANGUAGES},
        task_to_id={"transcribe": ids[TRANSCRIBE], "translate": ids[TRANSLATE]},
        no_timestamps_token_id=ids[NO_TIMESTAMPS],
        begin_suppress_tokens=[eot],
        suppress_tokens=specials,
        forced_decoder_ids=None,
    )
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    )
    with quiet_progress_bars():
        model.save_pretrained(target, safe_serialization=True)
        processor.save_pretrained(target)


def build_tiny_f5tts(
    out_dir: Path,
    seed: int = 0,
    *,
    arch: dict[str, Any] | None = None,
    tokens: list[str] | None = None,
    name: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Create the tiny F5-TTS (model.yaml, model.safetensors, vocab.txt) in `out_dir`.

    `arch` (an f5-tts `model.arch`), `tokens` (the vocabulary), `name` and `dtype` (of the
    stored weights) let `bench.models` write a real-sized one the same way.
    """
    writer = partial(_write_f5tts, arch=arch, tokens=tokens, name=name, dtype=dtype)
    return build_atomic(out_dir, F5_CHECKPOINT_FILE, "tiny F5-TTS", writer, seed)


def build_tiny_vocos(out_dir: Path, seed: int = 0, *, config: dict[str, Any] | None = None) -> Path:
    """Create the tiny Vocos vocoder (config.yaml, pytorch_model.bin) in `out_dir`; `config`
    (see `vocos_config`) gives another size."""
    writer = partial(_write_vocos, config=config)
    return build_atomic(out_dir, VOCOS_WEIGHTS_FILE, "tiny Vocos", writer, seed)


def build_tiny_whisper(out_dir: Path, seed: int = 0) -> Path:
    """Create the tiny Whisper ASR model directory in `out_dir`."""
    return build_atomic(out_dir, WHISPER_MARKER_FILE, "tiny Whisper", _write_whisper, seed)
