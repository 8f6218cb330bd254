"""The layers: `serve_app` -> `deployments` -> `core`, never back up, and light imports where
other processes pay for them (the handle API, the Gateway, the model replicas)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> the project packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "deployments": {"core"},
    "serve_app": {"core", "deployments"},
}


def _imported_packages(path: Path) -> set[tuple[str, int]]:
    """Top-level project packages imported anywhere in the file (functions included)."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in ALLOWED:
                found.add((top, node.lineno))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_only_go_down(package: str) -> None:
    assert _modules(package), f"{package}/ has no modules"
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in _modules(package)
        for target, line in sorted(_imported_packages(path))
        if target != package and target not in ALLOWED[package]
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_walker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The check above can fail: an import inside a function is found too."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from serve_app.settings import Settings\n")
    assert _imported_packages(module) == {("serve_app", 2)}


def _loaded_after(statement: str) -> set[str]:
    """Top-level modules in sys.modules after `statement` in a fresh interpreter."""
    code = (
        "import json, sys\n"
        f"{statement}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


HEAVY_FOR_CALLERS = {
    "boto3", "botocore", "hnswlib", "sqlmodel", "sqlalchemy", "serve_app", "fastapi", "openai",
    "ray", "torch", "diffusers", "open_clip", "f5_tts",
}  # fmt: skip


def test_the_handle_api_is_light() -> None:
    """Other Ray apps (and clients without Ray) import `deployments.api`: types and names only."""
    loaded = _loaded_after("import deployments.api")
    assert not loaded & HEAVY_FOR_CALLERS, sorted(loaded & HEAVY_FOR_CALLERS)


def test_the_gateway_does_not_import_the_models_stacks() -> None:
    """The Gateway process never loads hnswlib, SQLModel, openai or the model libraries."""
    loaded = _loaded_after("import serve_app.gateway")
    unexpected = loaded & {
        "hnswlib",
        "sqlmodel",
        "openai",
        "open_clip",
        "diffusers",
        "f5_tts",
        "transformers",
    }
    assert not unexpected, sorted(unexpected)


@pytest.mark.parametrize(
    "module",
    ["deployments.clip_embedder", "deployments.image_generator", "deployments.voice_cloner"],
)
def test_model_replicas_do_not_import_storage_or_the_catalog(module: str) -> None:
    loaded = _loaded_after(f"import {module}")
    unexpected = loaded & {"boto3", "botocore", "hnswlib", "sqlmodel", "serve_app"}
    assert not unexpected, sorted(unexpected)
