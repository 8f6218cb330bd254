"""serve_app.tiny.hub_cache: the stand-ins sit where huggingface_hub looks for the default
model ids, in its own layout, and the pieces taken from packages are the packages' own.

Only the small stand-ins are built here (seconds); the rehearsal tier builds and loads all
of them through the production loaders.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from core import defaults
from serve_app.tiny import hub_cache

SMALL = ["vocos", "whisper"]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    hub_cache.build_hub_cache(home, only=SMALL)
    return home


def test_the_stand_ins_are_the_default_model_ids() -> None:
    repos = {name: repo.repo_id for name, repo in hub_cache.stand_ins().items()}
    assert repos == {
        "sd-turbo": defaults.IMAGE_MODEL,
        # open_clip's laion5b_s13b_b90k weights, and its HF text tower's config and tokenizer
        "clip": "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k",
        "clip-text": "xlm-roberta-base",
        "f5tts": "SWivid/F5-TTS",
        "vocos": defaults.VOICE_VOCODER,
        "whisper": defaults.VOICE_ASR_MODEL,
    }
    assert hub_cache.clip_hub_file() == (repos["clip"], "open_clip_model.safetensors")


def test_layout_is_huggingface_hubs_own(hf_home: Path) -> None:
    for name in SMALL:
        repo_id = hub_cache.stand_ins()[name].repo_id
        repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
        commit = (repo / "refs" / "main").read_text()
        assert len(commit) == 40 and int(commit, 16) >= 0
        snapshot = repo / "snapshots" / commit
        files = [p for p in snapshot.rglob("*") if not p.is_dir()]
        assert files
        for link in files:
            assert link.is_symlink() and not os.path.isabs(os.readlink(link))
            blob = link.resolve()
            assert blob.parent == (repo / "blobs").resolve()
            assert blob.name == hashlib.sha256(blob.read_bytes()).hexdigest()


def test_huggingface_hub_finds_every_file_offline(hf_home: Path) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir

    found = hub_cache.hub_cache_files(hf_home)
    assert set(found) == {defaults.VOICE_VOCODER, defaults.VOICE_ASR_MODEL}
    for repo_id, files in found.items():
        for name, size in files.items():
            path = hf_hub_download(repo_id, name, cache_dir=hf_home / "hub", local_files_only=True)
            assert Path(path).stat().st_size == size
    scanned = {repo.repo_id: repo for repo in scan_cache_dir(hf_home / "hub").repos}
    assert set(scanned) == set(found)
    assert all(
        {ref for revision in repo.revisions for ref in revision.refs} == {"main"}
        for repo in scanned.values()
    )


def test_a_second_build_changes_nothing_and_a_broken_one_is_finished(hf_home: Path) -> None:
    repo_id = defaults.VOICE_VOCODER
    snapshot = hub_cache.snapshot_dir(hf_home, repo_id)
    before = {p.name: p.resolve().stat().st_mtime_ns for p in snapshot.iterdir()}
    hub_cache.build_hub_cache(hf_home, only=["vocos"])
    assert {p.name: p.resolve().stat().st_mtime_ns for p in snapshot.iterdir()} == before

    (snapshot / "config.yaml").resolve().unlink()  # a blob lost: the snapshot is incomplete
    hub_cache.build_hub_cache(hf_home, only=["vocos"])
    assert (snapshot / "config.yaml").is_file()


def test_unknown_stand_in_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown stand-in"):
        hub_cache.build_hub_cache(tmp_path, only=["nope"])


def test_sd_turbo_tokenizer_files_tokenize_as_open_clips_bpe(tmp_path: Path) -> None:
    """The CLIPTokenizer written from open_clip's BPE file gives open_clip's token ids."""
    import open_clip
    from transformers import CLIPTokenizer

    hub_cache.write_clip_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(tokenizer) == hub_cache.CLIP_VOCAB_SIZE
    # Plain words: transformers 5's CLIPTokenizer, built from vocab.json + merges.txt, leaves
    # a "!" glued to a word without "</w>" where open_clip gives "!</w>".
    for text in ("a photo of a cat", "Poster art of a brooding prince holding a skull"):
        ours = tokenizer(text, padding="max_length", max_length=77)["input_ids"]
        theirs = open_clip.tokenize([text])[0].tolist()
        assert ours[: ours.index(tokenizer.eos_token_id) + 1] == [t for t in theirs if t]


def test_f5_vocab_is_the_packaged_one() -> None:
    tokens = hub_cache.f5_vocab_tokens()
    assert tokens[0] == " " and len(tokens) == len(set(tokens)) > 2000
    assert hub_cache.f5_vocab_path().read_text("utf-8") == "".join(t + "\n" for t in tokens)
