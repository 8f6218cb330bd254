"""Shared helpers every model wrapper uses to locate weights and pick device, dtype, threads.

Weights are named by a local path, a hub id (`resolve_model_ref`, `resolve_model_files`) or,
for one file, an `hf://<owner>/<repo>/<file>` path (`resolve_file`, downloaded on use).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

HF_PREFIX = "hf://"
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_model_ref(ref: str) -> tuple[str, bool]:
    """Return (absolute local path or hub id, is_local) for a model reference.

    A ref that exists on disk is local. A ref that looks like a path (starts with /, ./, ../
    or ~) but does not exist raises FileNotFoundError; anything else is taken as a hub id.
    """
    ref = ref.strip()
    if not ref:
        raise ValueError("model reference is empty")
    path = Path(ref).expanduser()
    if path.exists():
        return str(path.absolute()), True
    if ref.startswith(_PATH_PREFIXES) or ref in (".", ".."):
        raise FileNotFoundError(
            f"model path {ref!r} (resolved to {path.absolute()}) does not exist; "
            "give an existing local directory or a hub id such as 'stabilityai/sd-turbo'"
        )
    return ref, False


def split_hf_path(ref: str) -> tuple[str, str]:
    """hf://owner/repo/path/in/repo -> ("owner/repo", "path/in/repo")."""
    parts = ref.removeprefix(HF_PREFIX).strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{ref!r} is not an hf://<owner>/<repo>/<file> path")
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_file(ref: str, what: str) -> tuple[str, str]:
    """(local file path, "local" | "hub") for a local file or an hf:// path (downloaded).

    `what` names the file in the error for a missing local one ("checkpoint", "vocab").
    """
    if ref.startswith(HF_PREFIX):
        from huggingface_hub import hf_hub_download

        repo_id, filename = split_hf_path(ref)
        return hf_hub_download(repo_id=repo_id, filename=filename), "hub"
    path, is_local = resolve_model_ref(ref)
    if not is_local or not Path(path).is_file():
        raise FileNotFoundError(
            f"{what} {ref!r} is not an existing file; give a local path or an "
            "hf://<owner>/<repo>/<file> path"
        )
    return path, "local"


def resolve_model_files(ref: str, names: tuple[str, ...], what: str) -> tuple[str, str]:
    """(local directory holding every file in `names`, "local" | "hub") for a model ref.

    A local directory must already hold them all; a hub id has each one downloaded (into
    one snapshot directory, which is returned).
    """
    path, is_local = resolve_model_ref(ref)
    if is_local:
        missing = [name for name in names if not (Path(path) / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{what} directory {path} lacks {missing}")
        return path, "local"
    from huggingface_hub import hf_hub_download

    downloaded = [hf_hub_download(repo_id=path, filename=name) for name in names]
    return str(Path(downloaded[-1]).parent), "hub"


def pick_device(requested: str) -> torch.device:
    """Map "auto" | "cpu" | "cuda" | "cuda:N" to a device; "cuda" without a GPU raises."""
    requested = requested.strip().lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {requested!r} was requested but CUDA is not available on this machine "
                "(no GPU, or a CPU-only torch build); use device 'cpu' or 'auto'"
            )
        device = torch.device(requested)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {requested!r} was requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return device
    raise ValueError(f"unknown device {requested!r}; expected 'auto', 'cpu' or 'cuda'")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """Map "auto" | "float32" | "float16" | "bfloat16" to a dtype ("auto": fp16 on CUDA)."""
    requested = requested.strip().lower()
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[requested]
    except KeyError:
        raise ValueError(
            f"unknown dtype {requested!r}; expected 'auto' or one of {sorted(_DTYPES)}"
        ) from None


def set_torch_threads(n: int | None) -> None:
    """Set torch's intra-op CPU thread count when `n` is given (process-wide)."""
    if n is None:
        return
    if n < 1:
        raise ValueError(f"torch thread count must be >= 1, got {n}")
    torch.set_num_threads(n)


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence the diffusers and transformers loading/saving progress bars, then restore them."""
    restore = []
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if module.is_progress_bar_enabled():
            module.disable_progress_bar()
            restore.append(module)
    try:
        yield
    finally:
        for module in restore:
            module.enable_progress_bar()
