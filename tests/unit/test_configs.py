"""The Serve configs and the KubeRay RayService parse, name importable builders, agree with
each other and pass Ray's own schema. No Ray cluster is started."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIGS = ("serve_config.yaml", "configs/offline-cpu.yaml")
SECRET_NAMES = (
    "R2_ACCOUNT_ID",
    "R2_ACCESS_KEY_ID",
    "R2_SECRET_ACCESS_KEY",
    "R2_BUCKET_NAME",
    "OPENAI_API_KEY",
    "API_KEYS",
)


def load(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def resolve(import_path: str) -> Any:
    module, _, attribute = import_path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def rayservice_docs(kind: str) -> list[dict[str, Any]]:
    docs = yaml.safe_load_all((ROOT / "configs/rayservice.yaml").read_text())
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    (service,) = rayservice_docs("RayService")
    assert service["apiVersion"] == "ray.io/v1"
    return service


def containers(service: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    (worker_group,) = cluster["workerGroupSpecs"]
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    (worker,) = worker_group["template"]["spec"]["containers"]
    return head, worker


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


@pytest.mark.parametrize("path", SERVE_CONFIGS)
def test_serve_configs_validate_and_name_an_importable_builder(path: str) -> None:
    config = ServeDeploySchema.model_validate(load(path))
    (app,) = config.applications
    assert (app.name, app.route_prefix) == ("ai", "/")
    assert callable(resolve(app.import_path))


def test_offline_profile_reads_files_that_exist() -> None:
    (app,) = load("configs/offline-cpu.yaml")["applications"]
    assert (ROOT / app["args"]["env_files"][0]).is_file()


def test_rayservice_serves_the_production_applications(rayservice: dict[str, Any]) -> None:
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    config = ServeDeploySchema.model_validate(embedded)
    production = load("serve_config.yaml")
    assert embedded["applications"] == production["applications"]
    assert embedded["http_options"] == production["http_options"]
    (app,) = config.applications
    assert app.import_path == "serve_app.app:build_app"
    assert callable(resolve(app.import_path))


def test_gpu_workers_declare_the_model_resource(rayservice: dict[str, Any]) -> None:
    head, worker = containers(rayservice)
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    # KubeRay passes the value to `ray start --resources` as is: a quoted JSON object.
    resources = json.loads(
        group["rayStartParams"]["resources"].strip("'")
    )  # KubeRay strips the quotes
    assert resources == {env_of(worker)["MODEL_NODE_RESOURCE"]: 1}
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert env_of(worker)["CPU_FALLBACK"] == "0"


def test_head_keeps_the_search_database_on_a_claimed_volume(rayservice: dict[str, Any]) -> None:
    head_group = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert float(head_group["rayStartParams"]["num-cpus"]) >= 1  # runs Gateway and VectorIndex
    head, worker = containers(rayservice)
    db_dir = str(Path(env_of(head)["IMAGE_SEARCH_DB_PATH"]).parent)
    (mount,) = [m for m in head["volumeMounts"] if m["mountPath"] == db_dir]
    (volume,) = [v for v in head_group["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    claims = {claim["metadata"]["name"] for claim in rayservice_docs("PersistentVolumeClaim")}
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert "volumeMounts" not in worker


def test_every_pod_gets_the_same_valid_settings(rayservice: dict[str, Any]) -> None:
    head, worker = containers(rayservice)
    assert head["env"] == worker["env"] and head["envFrom"] == worker["envFrom"]
    assert [ref["secretRef"]["name"] for ref in head["envFrom"]] == ["common-ai-server-secrets"]
    env = {name: value for name, value in env_of(head).items() if not name.startswith("RAY_")}
    assert not set(env) & set(SECRET_NAMES), "secrets come from the Secret, not plain env"
    assert {name.lower() for name in env} <= set(Settings.model_fields)
    settings = load_settings([], {**env, **{name: "x" for name in SECRET_NAMES}})
    assert settings.model_node_resource == "gpu_node" and settings.r2_enabled
    assert not settings.cpu_fallback


def test_every_pod_runs_on_serves_fast_path(rayservice: dict[str, Any]) -> None:
    from dotenv import dotenv_values

    head, worker = containers(rayservice)
    fast_path = dotenv_values(ROOT / "configs/fast-path.env")
    assert fast_path == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    for container in (head, worker):
        ray_env = {k: v for k, v in env_of(container).items() if k.startswith("RAY_")}
        assert ray_env == fast_path
