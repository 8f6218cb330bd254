"""configs/rayservice.yaml against what KubeRay and Ray accept and do with it: the RayService
CRD's schema, the operator's handling of `rayStartParams.resources`, `num-gpus` and the worker
readiness probe, Ray Serve's own config schema, the GPU budget of the models it turns on; and
the Dockerfile and .dockerignore that build its image.

No network and no cluster: the KubeRay facts are encoded below, with where they were read.
Every check is a function returning its problems, and each is also run on a deliberately
broken copy of the manifest to show that it can fail.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.serve.config import ProxyLocation
from ray.serve.schema import (
    DeploymentSchema,
    HTTPOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "configs/rayservice.yaml"

# --- KubeRay facts --------------------------------------------------------------------------
# The manifest names KubeRay >= 1.3 (the first release with RayService spec.upgradeStrategy).
# Read from github.com/ray-project/kuberay at the tags v1.3.2 (the newest 1.3 release) and
# v1.7.0 (the newest release when this was written):
#   ray-operator/config/crd/bases/ray.io_rayservices.yaml  the CRD's OpenAPI schema (ray.io/v1;
#       the same file as helm-chart/kuberay-operator/crds/ray.io_rayservices.yaml)
#   ray-operator/controllers/ray/utils/validation.go        upgradeStrategy.type values, and
#       minReplicas/maxReplicas required without autoscaling
#   ray-operator/controllers/ray/common/pod.go               rayStartParams.resources parsing,
#       num-gpus derivation, the `ray start` command line, the injected readiness probe
#
# The schema below holds for both versions, for the parts the manifest uses: the property
# names are v1.3.2's (v1.7.0 only adds to them), `required` is the union of both (v1.3.2
# requires rayStartParams in each group, v1.7.0 requires spec.rayClusterConfig), and the
# upgradeStrategy.type values are the intersection (v1.7.0 also accepts
# NewClusterWithIncrementalUpgrade). Objects whose whole property list is written here are
# closed, so an unknown or misspelt key fails, as under kubectl's strict field validation;
# ANY marks a property that exists but whose inside is not checked.
KUBERAY_MIN_VERSION = "1.3"
KUBERAY_CHECKED = ("v1.3.2", "v1.7.0")

ANY: dict[str, Any] = {}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
INT64 = {"type": "integer"}
STRINGS = {"type": "array", "items": STRING}
STRING_MAP = {"type": "object", "additionalProperties": STRING}  # map[string]string
# resource.Quantity: x-kubernetes-int-or-string with the CRD's pattern for strings.
QUANTITY = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
}


def closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


PROBE = closed(
    {
        "exec": closed({"command": STRINGS}),
        "failureThreshold": INT32,
        "grpc": ANY,
        "httpGet": ANY,
        "initialDelaySeconds": INT32,
        "periodSeconds": INT32,
        "successThreshold": INT32,
        "tcpSocket": ANY,
        "terminationGracePeriodSeconds": INT64,
        "timeoutSeconds": INT32,
    }
)
CONTAINER = closed(
    {
        "args": STRINGS,
        "command": STRINGS,
        "env": array(closed({"name": STRING, "value": STRING, "valueFrom": ANY}, ("name",))),
        "envFrom": array(
            closed(
                {
                    "configMapRef": ANY,
                    "prefix": STRING,
                    "secretRef": closed({"name": STRING, "optional": BOOLEAN}),
                }
            )
        ),
        "image": STRING,
        "imagePullPolicy": STRING,
        "lifecycle": ANY,
        "livenessProbe": PROBE,
        "name": STRING,
        "ports": array(
            closed(
                {
                    "containerPort": INT32,
                    "hostIP": STRING,
                    "hostPort": INT32,
                    "name": STRING,
                    "protocol": STRING,
                },
                ("containerPort",),
            )
        ),
        "readinessProbe": PROBE,
        "resizePolicy": ANY,
        "resources": closed(
            {
                "claims": ANY,
                "limits": {"type": "object", "additionalProperties": QUANTITY},
                "requests": {"type": "object", "additionalProperties": QUANTITY},
            }
        ),
        "restartPolicy": STRING,
        "securityContext": ANY,
        "startupProbe": PROBE,
        "stdin": BOOLEAN,
        "stdinOnce": BOOLEAN,
        "terminationMessagePath": STRING,
        "terminationMessagePolicy": STRING,
        "tty": BOOLEAN,
        "volumeDevices": ANY,
        "volumeMounts": array(
            closed(
                {
                    "mountPath": STRING,
                    "mountPropagation": STRING,
                    "name": STRING,
                    "readOnly": BOOLEAN,
                    "recursiveReadOnly": STRING,
                    "subPath": STRING,
                    "subPathExpr": STRING,
                },
                ("mountPath", "name"),
            )
        ),
        "workingDir": STRING,
    },
    ("name",),
)
POD_SPEC = closed(
    {
        **dict.fromkeys(
            (
                "activeDeadlineSeconds",
                "affinity",
                "automountServiceAccountToken",
                "dnsConfig",
                "dnsPolicy",
                "enableServiceLinks",
                "ephemeralContainers",
                "hostAliases",
                "hostIPC",
                "hostNetwork",
                "hostPID",
                "hostUsers",
                "hostname",
                "imagePullSecrets",
                "initContainers",
                "nodeName",
                "nodeSelector",
                "os",
                "overhead",
                "preemptionPolicy",
                "priority",
                "priorityClassName",
                "readinessGates",
                "resourceClaims",
                "resources",
                "restartPolicy",
                "runtimeClassName",
                "schedulerName",
                "schedulingGates",
                "serviceAccount",
                "serviceAccountName",
                "setHostnameAsFQDN",
                "shareProcessNamespace",
                "subdomain",
                "terminationGracePeriodSeconds",
                "topologySpreadConstraints",
            ),
            ANY,
        ),
        "containers": array(CONTAINER),
        "securityContext": {"type": "object", "properties": {"fsGroup": INT64}},
        "tolerations": array(
            closed(
                {
                    "effect": STRING,
                    "key": STRING,
                    "operator": STRING,
                    "tolerationSeconds": INT64,
                    "value": STRING,
                }
            )
        ),
        # A volume has one source besides its name; only the one used here is spelt out.
        "volumes": array(
            {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": STRING,
                    "persistentVolumeClaim": closed(
                        {"claimName": STRING, "readOnly": BOOLEAN}, ("claimName",)
                    ),
                },
            }
        ),
    },
    ("containers",),
)
POD_TEMPLATE = closed({"metadata": {"type": "object"}, "spec": POD_SPEC})
HEAD_GROUP = closed(
    {
        "enableIngress": BOOLEAN,
        "headService": ANY,
        "rayStartParams": STRING_MAP,
        "serviceType": STRING,
        "template": POD_TEMPLATE,
    },
    ("rayStartParams", "template"),
)
WORKER_GROUP = closed(
    {
        "groupName": STRING,
        "idleTimeoutSeconds": INT32,
        "maxReplicas": INT32,
        "minReplicas": INT32,
        "numOfHosts": INT32,
        "rayStartParams": STRING_MAP,
        "replicas": INT32,
        "scaleStrategy": ANY,
        "suspend": BOOLEAN,
        "template": POD_TEMPLATE,
    },
    ("groupName", "maxReplicas", "minReplicas", "rayStartParams", "template"),
)
RAY_CLUSTER = closed(
    {
        "autoscalerOptions": ANY,
        "enableInTreeAutoscaling": BOOLEAN,
        "gcsFaultToleranceOptions": ANY,
        "headGroupSpec": HEAD_GROUP,
        "headServiceAnnotations": STRING_MAP,
        "managedBy": STRING,
        "rayVersion": STRING,
        "suspend": BOOLEAN,
        "workerGroupSpecs": array(WORKER_GROUP),
    },
    ("headGroupSpec",),
)
# The CRD types upgradeStrategy.type as a plain string; validation.go rejects other values.
UPGRADE_TYPES = ("NewCluster", "None")
RAY_SERVICE = closed(
    {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "status": ANY,  # written by the operator
        "spec": closed(
            {
                "deploymentUnhealthySecondThreshold": INT32,
                "excludeHeadPodFromServeSvc": BOOLEAN,
                "rayClusterConfig": RAY_CLUSTER,
                "serveConfigV2": STRING,
                "serveService": ANY,
                "serviceUnhealthySecondThreshold": INT32,
                "upgradeStrategy": closed(
                    {"type": {"type": "string", "enum": list(UPGRADE_TYPES)}}
                ),
            },
            ("rayClusterConfig",),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)

# pod.go: the Serve port KubeRay's worker readiness probe asks (FindContainerPort(container,
# "serve", 8000)) for `localhost:<port>/-/healthz`; the Serve Service's port is the head
# container's port of that name.
SERVING_PORT_NAME = "serve"
DEFAULT_SERVING_PORT = 8000

# The models the manifest can turn on: their switch and the GPUs each replica reserves.
MODEL_GPUS = {
    "IMAGE_ENABLED": "IMAGE_NUM_GPUS",
    "IMAGE_SEARCH_ENABLED": "CLIP_NUM_GPUS",
    "VOICE_ENABLED": "VOICE_NUM_GPUS",
}


# --- reading the manifest -------------------------------------------------------------------
def manifest_docs() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(MANIFEST.read_text()))


@pytest.fixture
def service() -> dict[str, Any]:
    (doc,) = [doc for doc in manifest_docs() if doc["kind"] == "RayService"]
    return doc


def cluster(service: dict[str, Any]) -> dict[str, Any]:
    return service["spec"]["rayClusterConfig"]


def worker_group(service: dict[str, Any]) -> dict[str, Any]:
    (group,) = cluster(service)["workerGroupSpecs"]
    return group


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay's RayContainerIndex


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def serve_config(service: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def is_on(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def broken(service: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """A copy of the manifest with one change. deepcopy keeps the YAML anchor's sharing (the
    pods' env is one list), so a change to one pod's env must replace the list."""
    copied = copy.deepcopy(service)
    change(copied)
    return copied


# --- the CRD schema -------------------------------------------------------------------------
def schema_problems(service: dict[str, Any]) -> list[str]:
    """The CRD schema above, then the worker groups' replica bounds: validation.go (v1.7.0)
    rejects minReplicas > maxReplicas, and util.go GetWorkerGroupDesiredReplicas clamps
    replicas into [minReplicas, maxReplicas], so replicas outside would not be what runs."""
    validator = jsonschema.Draft202012Validator(RAY_SERVICE)
    problems = [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(service)
    ]
    if problems:
        return problems
    for group in cluster(service).get("workerGroupSpecs", []):
        low, high = group["minReplicas"], group["maxReplicas"]
        if not 0 <= low <= high:
            problems.append(f"{group['groupName']}: minReplicas {low} > maxReplicas {high}")
        if not low <= group.get("replicas", low) <= high:
            problems.append(f"{group['groupName']}: replicas outside [minReplicas, maxReplicas]")
    return problems


def test_manifest_fits_the_rayservice_crd(service: dict[str, Any]) -> None:
    assert schema_problems(service) == [], f"KubeRay {KUBERAY_CHECKED} would reject it"


KeyPath = tuple[str | int, ...]


def _set(path: KeyPath, value: object) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path
        node: Any = doc
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return change


_DELETE = object()
_CLUSTER: KeyPath = ("spec", "rayClusterConfig")
_WORKER: KeyPath = (*_CLUSTER, "workerGroupSpecs", 0)
_WORKER_CONTAINER: KeyPath = (*_WORKER, "template", "spec", "containers", 0)
_HEAD_CONTAINER: KeyPath = (*_CLUSTER, "headGroupSpec", "template", "spec", "containers", 0)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "upgradeStrategey"), {"type": "None"}),  # misspelt key
        (("spec", "upgradeStrategy", "type"), "NewClusterWithIncrementalUpgrade"),  # v1.5+ only
        (("spec", "upgradeStrategy", "type"), "none"),
        ((*_WORKER, "replica"), 1),
        ((*_WORKER, "minReplicas"), _DELETE),
        ((*_WORKER, "minReplicas"), 2),  # above maxReplicas
        ((*_WORKER, "replicas"), 3),
        ((*_WORKER, "rayStartParams"), _DELETE),  # required in v1.3
        ((*_WORKER, "rayStartParams", "num-gpus"), 1),  # map[string]string
        ((*_WORKER_CONTAINER, "resources", "limits", "nvidia.com/gpu"), "one"),
        ((*_WORKER_CONTAINER, "readinesProbe"), {}),
        ((*_HEAD_CONTAINER, "name"), _DELETE),
        ((*_HEAD_CONTAINER, "ports", 0, "containerPort"), "6379"),
        ((*_CLUSTER, "rayVersion"), 2.6),
        (("spec", "serveConfigV2"), {"applications": []}),  # a YAML string, not a mapping
    ],
)
def test_the_schema_check_catches_a_broken_manifest(
    service: dict[str, Any],
    path: KeyPath,
    value: object,
) -> None:
    assert schema_problems(broken(service, _set(path, value)))


# --- Ray Serve's schema ---------------------------------------------------------------------
def serve_problems(config: Any) -> list[str]:
    """Ray's ServeDeploySchema (ray 2.60.0), plus the unknown keys it lets through (its models
    ignore extra keys, so a misspelt `proxy_locaton` would silently mean the default)."""
    try:
        ServeDeploySchema.model_validate(config)
    except ValueError as error:
        return [str(error)]
    levels = [(ServeDeploySchema, config, "")]
    levels.append((HTTPOptionsSchema, config.get("http_options", {}), "http_options."))
    for app in config["applications"]:
        levels.append((ServeApplicationSchema, app, f"{app['name']}."))
        levels += [
            (DeploymentSchema, deployment, f"{app['name']}.{deployment['name']}.")
            for deployment in app.get("deployments", [])
        ]
    return [
        f"unknown key {where}{key}"
        for schema, keys, where in levels
        for key in keys
        if key not in schema.model_fields
    ]


def test_serve_configs_pass_ray_serves_schema(service: dict[str, Any]) -> None:
    production = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert serve_problems(production) == [], "serve_config.yaml"
    assert serve_problems(serve_config(service)) == [], "serveConfigV2"
    assert serve_config(service) == production, "serveConfigV2 is serve_config.yaml as it is"
    (app,) = ServeDeploySchema.model_validate(serve_config(service)).applications
    assert app.import_path == "serve_app.app:build_app"


def test_the_serve_check_catches_a_broken_serve_config(service: dict[str, Any]) -> None:
    config = serve_config(service)
    (app,) = config["applications"]
    for change in (
        {"proxy_location": "Everywhere"},
        {"proxy_locaton": "HeadOnly"},
        {"http_options": {**config["http_options"], "port": "eight"}},
        {"http_options": {**config["http_options"], "prot": 8000}},
        {"applications": [{key: value for key, value in app.items() if key != "import_path"}]},
        {"applications": [{**app, "deployments": [{"name": "Gateway", "num_replica": 2}]}]},
    ):
        assert serve_problems({**config, **change}), change


# --- the same settings on every pod ---------------------------------------------------------
def settings_problems(service: dict[str, Any]) -> list[str]:
    head = ray_container(cluster(service)["headGroupSpec"])
    problems = []
    for group in cluster(service)["workerGroupSpecs"]:
        worker = ray_container(group)
        if worker.get("env") != head.get("env"):
            problems.append(f"worker group {group['groupName']}: env differs from the head's")
        if worker.get("envFrom") != head.get("envFrom"):
            problems.append(f"worker group {group['groupName']}: envFrom differs")
        if worker.get("image") != head.get("image"):
            problems.append(f"worker group {group['groupName']}: image differs")
    unknown = {
        name
        for name in env_of(head)
        if not name.startswith("RAY_") and name.lower() not in Settings.model_fields
    }
    if unknown:
        problems.append(f"not settings: {sorted(unknown)}")
    return problems


def test_every_pod_gets_the_same_settings(service: dict[str, Any]) -> None:
    assert settings_problems(service) == []


def test_the_settings_check_catches_a_pod_that_differs(service: dict[str, Any]) -> None:
    def differ(doc: dict[str, Any]) -> None:
        worker = ray_container(worker_group(doc))
        worker["env"] = [*worker["env"], {"name": "VOICE_DEVICE", "value": "cpu"}]

    def misspell(doc: dict[str, Any]) -> None:
        env = ray_container(worker_group(doc))["env"]  # the shared list: both pods
        env.append({"name": "VOICE_NUM_GPU", "value": "0.35"})

    assert settings_problems(broken(service, differ))
    assert settings_problems(broken(service, misspell))


# --- rayStartParams.resources and num-gpus, as KubeRay and `ray start` read them -------------
def kuberay_resources(value: str) -> dict[str, float] | None:
    """pod.go getResourcesMap: strings.Trim(value, "'\\"` ") then json.Unmarshal into
    map[string]float64; None where KubeRay fails to parse it."""
    try:
        parsed = json.loads(value.strip("'\"` "))
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in parsed.values()
    ):
        return None
    return {key: float(v) for key, v in parsed.items()}


def kuberay_num_gpus(params: dict[str, str], limits: dict[str, Any]) -> str | None:
    """pod.go generateRayStartCommand -> addWellKnownAcceleratorResources: unless num-gpus is
    given, it is the first resource limit (in sorted order) whose name ends in "gpu",
    rounded up (Quantity.Value()). If `resources` does not parse, KubeRay logs the error
    and adds nothing."""
    if "num-gpus" in params:
        return params["num-gpus"]
    if "resources" in params and kuberay_resources(params["resources"]) is None:
        return None
    for name in sorted(limits):
        if name.endswith("gpu") and Decimal(str(limits[name])) != 0:
            return str(int(-(-Decimal(str(limits[name])) // 1)))
    return None


def ray_start_resources(value: str) -> dict[str, Any] | None:
    """pod.go convertParamMap writes ` --resources=<value> ` into the `ray start` line that
    the container runs with `bash -c`: the shell must hand Ray one word holding the JSON."""
    try:
        words = shlex.split(f"ray start --resources={value} --block")
    except ValueError:
        return None
    flags = [word for word in words if word.startswith("--resources=")]
    if len(words) != 4 or len(flags) != 1:
        return None
    try:
        parsed = json.loads(flags[0].removeprefix("--resources="))
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def gpu_resource_problems(service: dict[str, Any]) -> list[str]:
    problems = []
    for group in cluster(service)["workerGroupSpecs"]:
        params = group["rayStartParams"]
        worker = ray_container(group)
        wanted = env_of(worker).get("MODEL_NODE_RESOURCE")
        value = params.get("resources", "")
        if (parsed := kuberay_resources(value)) is None:
            problems.append(f"KubeRay cannot parse resources {value!r}")
        elif parsed.get(wanted, 0) <= 0:
            problems.append(f"resources {value!r} do not declare {wanted}")
        if (from_shell := ray_start_resources(value)) is None:
            problems.append(f"`ray start` would not get resources {value!r} as JSON")
        elif parsed is not None and from_shell != parsed:
            problems.append(f"KubeRay and `ray start` read {value!r} differently")
        gpus = worker["resources"]["limits"].get("nvidia.com/gpu", 0)
        num_gpus = kuberay_num_gpus(params, worker["resources"]["limits"])
        if num_gpus != str(gpus):
            problems.append(f"num-gpus {num_gpus} for a pod with {gpus} nvidia.com/gpu")
    return problems


def test_the_worker_declares_gpu_node_and_gets_its_gpus(service: dict[str, Any]) -> None:
    assert gpu_resource_problems(service) == []
    params = worker_group(service)["rayStartParams"]
    assert kuberay_resources(params["resources"]) == {"gpu_node": 1.0}
    limits = ray_container(worker_group(service))["resources"]["limits"]
    assert kuberay_num_gpus(params, limits) == "1"
    head = cluster(service)["headGroupSpec"]
    head_limits = ray_container(head)["resources"]["limits"]
    assert kuberay_num_gpus(head["rayStartParams"], head_limits) is None  # a CPU head


def test_the_old_escaped_format_loses_num_gpus() -> None:
    old = '"{\\"gpu_node\\": 1}"'  # YAML '"{\"gpu_node\": 1}"', the manifest before the fix
    assert ray_start_resources(old) == {"gpu_node": 1}  # the shell unescapes it for Ray...
    assert kuberay_resources(old) is None  # ...but KubeRay's parse fails,
    assert kuberay_num_gpus({"resources": old}, {"nvidia.com/gpu": 1}) is None  # so no num-gpus
    assert kuberay_num_gpus({"resources": "'{\"gpu_node\": 1}'"}, {"nvidia.com/gpu": 1}) == "1"


@pytest.mark.parametrize(
    "value",
    [
        '"{\\"gpu_node\\": 1}"',  # the old format: KubeRay's JSON parse fails, no num-gpus
        '{"gpu_node": 1}',  # parses, but the shell splits it and drops the quotes
        '\'{"gpu_node": "1"}\'',  # not map[string]float64
        "'{\"other\": 1}'",
    ],
)
def test_the_resources_check_catches_a_bad_value(service: dict[str, Any], value: str) -> None:
    assert gpu_resource_problems(
        broken(service, _set((*_WORKER, "rayStartParams", "resources"), value))
    )


def test_the_num_gpus_check_catches_a_wrong_count(service: dict[str, Any]) -> None:
    assert gpu_resource_problems(
        broken(service, _set((*_WORKER, "rayStartParams", "num-gpus"), "2"))
    )


# --- the GPU budget -------------------------------------------------------------------------
def gpu_budget_problems(service: dict[str, Any], *, voice_on: bool = False) -> list[str]:
    """The worker group's GPUs must hold one replica of every enabled model (each model is
    one replica of *_NUM_GPUS GPUs, placed on the workers by MODEL_NODE_RESOURCE)."""
    group = worker_group(service)
    worker = ray_container(group)
    env = env_of(worker)
    limits, requests = worker["resources"]["limits"], worker["resources"].get("requests", {})
    per_pod = Decimal(str(limits.get("nvidia.com/gpu", 0)))
    problems = []
    if str(requests.get("nvidia.com/gpu", limits.get("nvidia.com/gpu"))) != str(
        limits.get("nvidia.com/gpu")
    ):
        problems.append("nvidia.com/gpu requests must equal limits")
    pods = group["minReplicas"]  # always there; more may come, fewer never
    wanted: dict[str, Decimal] = {}
    for switch, variable in MODEL_GPUS.items():
        on = is_on(env.get(switch, "1")) or (voice_on and switch == "VOICE_ENABLED")
        if not on:
            continue
        if variable not in env:
            problems.append(f"{switch} on but {variable} unset (not checkable here)")
            continue
        gpus = Decimal(env[variable])
        if gpus > 1 and gpus != gpus.to_integral_value():
            problems.append(f"{variable}={gpus}: Ray takes fractions only below 1")
        if gpus > per_pod:
            problems.append(f"{variable}={gpus} does not fit on one pod ({per_pod} GPUs)")
        wanted[variable] = gpus
    if sum(wanted.values(), Decimal(0)) > per_pod * pods:
        problems.append(f"{dict(wanted)} need more than the worker group's {pods} x {per_pod} GPUs")
    return problems


@pytest.mark.parametrize("voice_on", [False, True], ids=["as-shipped", "voice-on"])
def test_the_gpu_worker_holds_every_model_it_enables(
    service: dict[str, Any],
    voice_on: bool,
) -> None:
    assert gpu_budget_problems(service, voice_on=voice_on) == []


def test_the_gpu_budget_check_catches_an_overbooked_worker(service: dict[str, Any]) -> None:
    def env_change(**values: str | None) -> Callable[[dict[str, Any]], None]:
        def change(doc: dict[str, Any]) -> None:
            for container in (
                ray_container(worker_group(doc)),
                ray_container(cluster(doc)["headGroupSpec"]),
            ):
                env = {k: v for k, v in env_of(container).items()}
                for name, value in values.items():
                    if value is None:
                        env.pop(name, None)
                    else:
                        env[name] = value
                container["env"] = [{"name": k, "value": v} for k, v in env.items()]

        return change

    # the manifest before the fix: two halves, voice would add a default (1 or "auto") GPU
    old = broken(service, env_change(CLIP_NUM_GPUS="0.5", VOICE_NUM_GPUS=None))
    assert gpu_budget_problems(old) == []
    assert gpu_budget_problems(old, voice_on=True)
    assert gpu_budget_problems(broken(service, env_change(VOICE_ENABLED="1", CLIP_NUM_GPUS="0.5")))
    assert gpu_budget_problems(broken(service, env_change(IMAGE_NUM_GPUS="1.5")))
    assert gpu_budget_problems(
        broken(service, _set((*_WORKER_CONTAINER, "resources", "requests", "nvidia.com/gpu"), 2))
    )


# --- readiness of the GPU worker ------------------------------------------------------------
def find_port(container: dict[str, Any], name: str, default: int) -> int:
    for port in container.get("ports", []):
        if port.get("name") == name:
            return int(port["containerPort"])
    return default


def readiness_problems(service: dict[str, Any]) -> list[str]:
    """pod.go initLivenessAndReadinessProbe: a RayService worker without a readinessProbe of
    its own gets one that needs the raylet AND the local Serve proxy
    (localhost:<serve port>/-/healthz); a probe given in the manifest is kept as it is.
    BuildPod labels every RayService worker ray.io/serve=true, so a Ready worker is in the
    Serve Service. Either way a worker must run a Serve proxy: EveryNode puts one on every
    node with a replica, and the models are pinned to the workers by MODEL_NODE_RESOURCE."""
    config = serve_config(service)
    port = int(config.get("http_options", {}).get("port", DEFAULT_SERVING_PORT))
    location = ServeDeploySchema.model_validate(config).proxy_location
    head = ray_container(cluster(service)["headGroupSpec"])
    problems = []
    if find_port(head, SERVING_PORT_NAME, -1) != port:
        problems.append(f"the head has no container port {SERVING_PORT_NAME!r} = {port}")
    for group in cluster(service)["workerGroupSpecs"]:
        worker = ray_container(group)
        env = env_of(worker)
        declared = kuberay_resources(group["rayStartParams"].get("resources", "{}")) or {}
        hosts_models = env.get("MODEL_NODE_RESOURCE") in declared and any(
            is_on(env.get(switch, "1")) for switch in MODEL_GPUS
        )
        if location is not ProxyLocation.EveryNode:
            problems.append(
                f"proxy_location {location.value}: no proxy on the workers, so "
                "KubeRay's probe keeps them NotReady (kuberay#4994), and a "
                "probe of their own would let the Serve Service send them traffic"
            )
        elif not hosts_models:
            problems.append(f"{group['groupName']}: no replica, so no proxy (NotReady)")
        if (
            "readinessProbe" not in worker
            and find_port(worker, SERVING_PORT_NAME, DEFAULT_SERVING_PORT) != port
        ):
            problems.append(
                f"{group['groupName']}: KubeRay's probe would ask a port other than Serve's {port}"
            )
    return problems


def test_the_gpu_worker_runs_a_proxy_and_becomes_ready(service: dict[str, Any]) -> None:
    assert serve_config(service)["proxy_location"] == "EveryNode"
    assert "readinessProbe" not in ray_container(worker_group(service))  # KubeRay's own
    assert readiness_problems(service) == []


def test_the_readiness_check_catches_a_worker_without_a_proxy(service: dict[str, Any]) -> None:
    def serve_change(**values: Any) -> Callable[[dict[str, Any]], None]:
        def change(doc: dict[str, Any]) -> None:
            doc["spec"]["serveConfigV2"] = yaml.safe_dump({**serve_config(doc), **values})

        return change

    def no_models(doc: dict[str, Any]) -> None:
        worker = ray_container(worker_group(doc))
        worker["env"] = [
            {**item, "value": "0"} if item["name"] in MODEL_GPUS else item for item in worker["env"]
        ]

    raylet_only = {
        "exec": {
            "command": ["bash", "-c", "wget -q -O- http://localhost:52365/api/local_raylet_healthz"]
        }
    }
    assert readiness_problems(broken(service, serve_change(proxy_location="HeadOnly")))
    assert readiness_problems(broken(service, serve_change(proxy_location="Disabled")))
    head_only_raylet_probe = broken(service, serve_change(proxy_location="HeadOnly"))
    ray_container(worker_group(head_only_raylet_probe))["readinessProbe"] = raylet_only
    assert readiness_problems(head_only_raylet_probe)
    assert readiness_problems(broken(service, no_models))
    assert readiness_problems(
        broken(
            service,
            serve_change(http_options={**serve_config(service)["http_options"], "port": 8080}),
        )
    )


# --- the image: Dockerfile and .dockerignore --------------------------------------------------
def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker's matcher (moby/patternmatcher) reads it: relative to
    the context root, `**` any number of directories, `*` and `?` within one name."""
    pattern = pattern.strip().lstrip("/").rstrip("/")
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
            continue
        else:
            out += re.escape(char)
        i += 1
    return re.compile(f"^{out}$")


def dockerignored(path: str, lines: list[str]) -> bool:
    """Whether `path` stays out of the build context: the last pattern matching it or one of
    its parent directories decides (`!` re-includes)."""
    parents = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    excluded = False
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        negate = line.lstrip().startswith("!")
        regex = dockerignore_regex(line.lstrip().removeprefix("!"))
        if any(regex.match(parent) for parent in parents):
            excluded = not negate
    return excluded


KEPT_OUT = (
    ".env",
    ".env.production",
    "configs/.env",
    ".venv/bin/python",
    "serve_app/.venv/x",
    ".git/HEAD",
    ".models/clip/model.safetensors",
    ".data/storage/a.png",
    "data/storage/a.png",
    "app/image_search.db",
    "image_search.db-wal",
    "serve_app/__pycache__/app.cpython-311.pyc",
    "core/records.pyc",
    "common_ai_server.egg-info/PKG-INFO",
    ".pytest_cache/v/cache",
    ".mypy_cache/x",
    ".ruff_cache/x",
    "out.png",
    "build/lib/x.py",
    ".coverage",
    "htmlcov/index.html",
)
KEPT_IN = (  # what `pip install .` needs, and the profiles
    "Dockerfile",
    "pyproject.toml",
    "README.md",
    "serve_config.yaml",
    "core/__init__.py",
    "serve_app/app.py",
    "serve_app/routes/__init__.py",
    "deployments/__init__.py",
    "configs/offline.env",
    "configs/fast-path.env",
)


def dockerignore_problems(lines: list[str]) -> list[str]:
    problems = [
        f"{path} goes into the image" for path in KEPT_OUT if not dockerignored(path, lines)
    ]
    problems += [
        f"{path} is left out of the image" for path in KEPT_IN if dockerignored(path, lines)
    ]
    # What git ignores is local state: keep it out of the image too.
    for raw in (ROOT / ".gitignore").read_text().splitlines():
        entry = raw.strip()
        if not entry or entry.startswith(("#", "!")):
            continue
        name = entry.strip("/").replace("*", "x")
        samples = [name] if entry.startswith("/") else [name, f"serve_app/{name}"]
        problems += [
            f"{sample} (.gitignore {entry}) goes into the image"
            for sample in samples
            if not dockerignored(sample, lines)
        ]
    return problems


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert dockerignore_problems(lines) == []


def test_the_dockerignore_check_catches_a_leak() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert dockerignore_problems([line for line in lines if ".env" not in line])
    assert dockerignore_problems([line for line in lines if ".venv" not in line])
    assert dockerignore_problems([*lines, "*.md"])  # README.md: pyproject's readme
    assert dockerignore_problems([*lines, "!.env"])
    assert dockerignored("serve_app/.env", [".env"]) is False  # root only, hence **/.env


def test_the_dockerfile_builds_the_image_the_manifest_runs(service: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [
        line.split(maxsplit=1)
        for line in re.sub(r"\\\n", " ", dockerfile).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    ray_version = cluster(service)["rayVersion"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert ray_version == ray.__version__
    assert f"ray[serve]=={ray_version}" in pyproject["project"]["dependencies"]
    assert pyproject["project"]["requires-python"].startswith(">=3.11,<3.12")
    assert instructions[0] == ["FROM", f"rayproject/ray:{ray_version}-py311-gpu"]
    runs = [arg for op, arg in instructions if op == "RUN"]
    assert any("apt-get install" in run and "ffmpeg" in run for run in runs)
    assert ["COPY", "--chown=ray:users . /home/ray/common-ai-server"] in instructions
    assert any(
        run.startswith("pip install") and "/home/ray/common-ai-server" in run for run in runs
    )
    header = MANIFEST.read_text().split("\napiVersion:", 1)[0]
    assert "Dockerfile" in header and "FROM " not in header, "the header points at the file"


# --- the KubeRay version the project names ----------------------------------------------------
def test_manifest_and_readme_name_the_kuberay_version() -> None:
    header = MANIFEST.read_text().split("\napiVersion:", 1)[0]
    readme = (ROOT / "README.md").read_text()
    named = f"KubeRay >= {KUBERAY_MIN_VERSION}"
    assert named in header and named in readme
    for checked in KUBERAY_CHECKED:
        assert checked in header
    assert not re.search(r"KubeRay >= 1\.[0-2]\b", header + readme)
