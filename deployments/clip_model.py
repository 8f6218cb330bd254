"""Plain-Python image and text embedder over an open_clip CLIP model (no Ray).

Owns loading the model named by a `ClipEmbedderConfig` (an open_clip name plus pretrained tag
or checkpoint file, a local open_clip directory, or an `hf-hub:` repo) onto one device, and
turning encoded images (JPEG/PNG/WEBP/GIF/BMP/TIFF bytes) or texts into L2-normalised float32
vectors in one shared space. Bad input raises ModelInputError (UnreadableImage for images)
naming the item's index. The Ray deployment is a thin shell around `ClipModel`.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from core.errors import ModelInputError, UnreadableImage
from deployments.configs import ClipEmbedderConfig
from deployments.gpu_budget import apply_memory_budget, loading_within_budget
from deployments.model_loading import pick_device, pick_dtype, resolve_model_ref, set_torch_threads

# Formats Pillow may try; anything else is rejected before a decoder runs. Bad input of any
# kind (wrong type included) raises UnreadableImage (415) or ModelInputError (422).
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
_PRECISIONS: dict[torch.dtype, str] = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
}


class ClipModel:
    """A loaded open_clip model; `embed_images` / `embed_texts` are safe from several threads."""

    def __init__(self, config: ClipEmbedderConfig) -> None:
        import open_clip

        self.config = config
        set_torch_threads(config.torch_threads)
        self.model_name, self.pretrained, self.source = _resolve_source(config)
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        apply_memory_budget(self.device, config.gpu_memory_fraction)
        with loading_within_budget("the CLIP model", self.device, config.gpu_memory_fraction):
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name,
                pretrained=self.pretrained,
                precision=_PRECISIONS[self.dtype],
                device=self.device,
                **_local_text_tower(self.model_name),
            )
        self.model = model.eval()
        self.preprocess: Callable[[Image.Image], torch.Tensor] = preprocess
        # open_clip picks the tokenizer from the model config: the BPE vocabulary shipped in
        # the wheel for CLIP text towers; for a Hugging Face text tower (`hf_tokenizer_name`)
        # the tokenizer files of a local directory itself, else that hub repo (or its cache).
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        # open_clip's forward passes keep no per-call state, but one device: one pass at a time.
        self._lock = threading.Lock()
        with self._lock, torch.inference_mode():
            self._dim = int(self._encode_texts(["a"]).shape[1])

    def warm_up(self) -> float:
        """Embed one small image and one text through the normal paths (decode, preprocess,
        forward), so that the first request does not pay for lazy initialisation; returns
        its milliseconds."""
        start = time.perf_counter()
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 96, 64)).save(buffer, format="PNG")
        self.embed_images([buffer.getvalue()])
        self.embed_texts(["warm-up"])
        return (time.perf_counter() - start) * 1000.0

    @property
    def dim(self) -> int:
        """Length of every embedding vector."""
        return self._dim

    def describe(self) -> dict[str, str]:
        """Model reference, where it came from, device, dtype and dimension, for info routes."""
        return {
            "model": self.config.model,
            "source": self.source,
            "path": self.model_name.removeprefix(LOCAL_DIR_PREFIX),
            "pretrained": self.pretrained or "",
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "dim": str(self._dim),
        }

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Embed encoded images; returns float32 (n, dim) unit vectors in input order.

        Raises UnreadableImage naming the index of an image that is not bytes, not an accepted
        format, undecodable, or larger than `max_image_pixels`.
        """
        if isinstance(images, (bytes, bytearray, memoryview, str)):
            raise UnreadableImage("images must be a list of encoded images")
        # Decode and preprocess everything first: bad input fails before any model work, and
        # only the small preprocessed tensors (not full-size decoded images) are kept.
        pixels = [self.preprocess(self._decode(i, data)) for i, data in enumerate(images)]
        if not pixels:
            return np.zeros((0, self._dim), dtype=np.float32)
        step = self.config.max_batch_size
        with self._lock, torch.inference_mode():
            chunks = [
                self._encode_images(torch.stack(pixels[start : start + step]))
                for start in range(0, len(pixels), step)
            ]
        return _to_numpy(chunks)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (any language the tokenizer covers); returns float32 (n, dim) unit vectors.

        Texts longer than the model's context are truncated. Raises ModelInputError naming the
        index of an item that is not a string or is empty/whitespace.
        """
        if isinstance(texts, (str, bytes)):
            raise ModelInputError("texts must be a list of strings, not a single string")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                kind = type(text).__name__
                raise ModelInputError(f"text {i} must be a string, not {kind}")
            if not text.strip():
                raise ModelInputError(f"text {i} is empty")
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        step = self.config.max_batch_size
        with self._lock, torch.inference_mode():
            chunks = [
                self._encode_texts(texts[start : start + step])
                for start in range(0, len(texts), step)
            ]
        return _to_numpy(chunks)

    # --- internals (callers hold the lock and inference mode) --------------------------------

    def _encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, dtype=self.dtype)
        return F.normalize(self.model.encode_image(batch).float(), dim=-1)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def _decode(self, index: int, data: Any) -> Image.Image:
        """Decode one image to RGB, or raise UnreadableImage naming `index`."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            kind = type(data).__name__
            raise UnreadableImage(f"image {index} must be bytes, not {kind}")
        if len(data) == 0:
            raise UnreadableImage(f"image {index} is empty")
        accepted = "/".join(IMAGE_FORMATS)
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:
            raise UnreadableImage(f"image {index} has too many pixels: {exc}") from None
        except Exception:  # noqa: BLE001 - Pillow raises many types for unknown data
            raise UnreadableImage(
                f"image {index} could not be decoded: not a valid {accepted} image"
            ) from None
        width, height = image.size
        if width * height > self.config.max_image_pixels:
            image.close()
            raise UnreadableImage(
                f"image {index} is {width}x{height} = {width * height} pixels, more than the "
                f"limit of {self.config.max_image_pixels} pixels"
            )
        try:
            with image:
                image.load()  # the first frame of animated GIF/WEBP and multi-page TIFF
                return ImageOps.exif_transpose(image).convert("RGB")
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
            reason = f"{type(exc).__name__}: {exc}"[:200]
            raise UnreadableImage(
                f"image {index} could not be decoded ({image.format}): {reason}"
            ) from None


def _resolve_source(config: ClipEmbedderConfig) -> tuple[str, str | None, str]:
    """Return (open_clip model name, pretrained tag or file or None, source) for a config.

    source is "local" for a local open_clip directory, "hub" for `hf-hub:` repos, and
    "open_clip" for a built-in architecture name (weights from a tag or a local file).
    """
    ref = config.model.strip()
    if ref.startswith(HF_HUB_PREFIX):
        if not ref.removeprefix(HF_HUB_PREFIX).strip():
            raise ValueError("model 'hf-hub:' needs a repository id, e.g. 'hf-hub:org/repo'")
        return ref, None, "hub"
    if ref.startswith(LOCAL_DIR_PREFIX):
        path = Path(ref.removeprefix(LOCAL_DIR_PREFIX).strip()).expanduser().absolute()
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} (from {ref!r}) does not exist")
        return LOCAL_DIR_PREFIX + str(path), None, "local"
    path_or_name, is_local = resolve_model_ref(ref)
    if is_local:
        if not Path(path_or_name).is_dir():
            raise ValueError(
                f"model {ref!r} is a file; give an open_clip model name with the checkpoint "
                "as `pretrained`, or a directory holding open_clip_config.json + weights"
            )
        return LOCAL_DIR_PREFIX + path_or_name, None, "local"
    name = path_or_name.replace("/", "-")  # open_clip's own normalisation of built-in names
    pretrained = config.pretrained.strip() if config.pretrained else None
    if pretrained:
        pretrained_ref, pretrained_is_file = resolve_model_ref(pretrained)
        if pretrained_is_file:
            if not Path(pretrained_ref).is_file():
                raise ValueError(f"pretrained checkpoint {pretrained!r} is not a file")
            pretrained = pretrained_ref
    return name, pretrained or None, "open_clip"


def _local_text_tower(model_name: str) -> dict[str, Any]:
    """Model overrides that load a local directory's Hugging Face text tower from the directory.

    open_clip builds a text tower named by `text_cfg.hf_model_name` (e.g. `xlm-roberta-base`)
    from that hub repo's config.json, even for a `local-dir:` model whose weights are all in
    the directory. When the directory holds that config under the same name
    (`<dir>/xlm-roberta-base/config.json`), it is used instead, so the directory is complete
    on its own; otherwise (or for built-in names and `hf-hub:`) open_clip asks the hub or its
    cache as usual. The directory's checkpoint holds the text weights: none are loaded.
    """
    if not model_name.startswith(LOCAL_DIR_PREFIX):
        return {}
    directory = Path(model_name.removeprefix(LOCAL_DIR_PREFIX))
    try:
        config = json.loads((directory / "open_clip_config.json").read_text("utf-8"))
        text_cfg = dict(config["model_cfg"]["text_cfg"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # open_clip reports a missing or broken config itself
    hf_name = text_cfg.get("hf_model_name")
    if not isinstance(hf_name, str) or not hf_name:
        return {}
    local = directory / hf_name
    if not (local / "config.json").is_file():
        return {}
    return {"text_cfg": {**text_cfg, "hf_model_name": str(local), "hf_model_pretrained": False}}


def _to_numpy(chunks: list[torch.Tensor]) -> np.ndarray:
    """Concatenate normalised float chunks into one contiguous float32 array."""
    return np.ascontiguousarray(torch.cat(chunks).cpu().numpy(), dtype=np.float32)
