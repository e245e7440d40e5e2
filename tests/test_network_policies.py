"""deploy/k8s/network-policies.yaml, read as Kubernetes reads it: each selector is matched
against the pod labels of the workloads in the manifests, each port against their container
ports, and the resulting "who may connect to what" is checked pair by pair."""

import copy
from typing import Any

import pytest

from tests.test_deploy import K8S, load_all, pod_spec

POLICIES = K8S / "network-policies.yaml"
MODEL_SERVICES = ("faceswap", "lipsync", "voice")
MINIO_CLIENTS = {"orchestrator", "voice", "faceswap", "lipsync", "minio-init"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
KEDA = {"kubernetes.io/metadata.name": "keda"}
KEDA_OPERATOR = {"app.kubernetes.io/name": "keda-operator"}
NAMESPACE = {"kubernetes.io/metadata.name": "remind"}


def policies() -> list[dict[str, Any]]:
    return [doc for doc in load_all(POLICIES) if doc["kind"] == "NetworkPolicy"]


def workloads() -> dict[str, dict[str, Any]]:
    """Every pod template in the manifests: name -> {labels, ports (name -> number)}."""
    pods = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_all(path):
            if doc.get("kind") not in ("Deployment", "StatefulSet", "Job"):
                continue
            template = doc["spec"]["template"]
            ports = {
                port.get("name", str(port["containerPort"])): port["containerPort"]
                for container in pod_spec(doc)["containers"]
                for port in container.get("ports", [])
            }
            pods[doc["metadata"]["name"]] = {
                "labels": template["metadata"]["labels"],
                "ports": ports,
            }
    return pods


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        present = labels.get(key)
        matched = {
            "In": present in expression.get("values", []),
            "NotIn": present not in expression.get("values", []),
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def _peer_admits(peer: dict[str, Any], source: dict[str, str] | None, namespace: dict) -> bool:
    """One `from` entry against a source pod's labels (None: a client outside any pod)."""
    if "ipBlock" in peer:
        return source is None
    if source is None:
        return False
    if "namespaceSelector" in peer and not selects(peer["namespaceSelector"], namespace):
        return False
    if "namespaceSelector" not in peer and namespace != NAMESPACE:
        return False
    return selects(peer.get("podSelector", {}), source)


def _port_admits(rule_ports: list[dict[str, Any]] | None, port: int, named: dict) -> bool:
    if not rule_ports:
        return True
    return any(named.get(item["port"], item["port"]) == port for item in rule_ports)


def allowed(
    every: list[dict[str, Any]],
    source: dict[str, str] | None,
    target: dict[str, Any],
    port: int,
    namespace: dict[str, str] = NAMESPACE,
) -> bool:
    """Whether `source` may open a TCP connection to `port` of the `target` pod."""
    governing = [p for p in every if selects(p["spec"]["podSelector"], target["labels"])]
    ingress_policies = [p for p in governing if "Ingress" in p["spec"].get("policyTypes", [])]
    if not ingress_policies:
        return True  # an unselected pod is open: the default-deny policy must select all
    return any(
        _port_admits(rule.get("ports"), port, target["ports"])
        and (
            "from" not in rule
            or any(_peer_admits(peer, source, namespace) for peer in rule["from"])
        )
        for policy in ingress_policies
        for rule in policy["spec"].get("ingress", [])
    )


def test_ingress_is_denied_unless_a_policy_allows_it() -> None:
    deny = [p for p in policies() if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny[0]["spec"]


def test_every_selector_and_port_names_something_that_exists() -> None:
    pods = workloads()
    for policy in policies():
        spec, name = policy["spec"], policy["metadata"]["name"]
        selected = [pod for pod in pods.values() if selects(spec["podSelector"], pod["labels"])]
        assert selected, f"{name} selects no pod"
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(selects(peer["podSelector"], p["labels"]) for p in pods.values()), (
                        f"{name}: a `from` selects no pod"
                    )
            for item in rule.get("ports", []):
                assert item.get("protocol", "TCP") == "TCP"
                for pod in selected:
                    assert item["port"] in {*pod["ports"], *pod["ports"].values()}, (
                        f"{name}: port {item['port']} is not a port of {pod['labels']}"
                    )


@pytest.mark.parametrize("service", MODEL_SERVICES)
def test_only_the_orchestrator_reaches_a_model_service(service: str) -> None:
    pods, every = workloads(), policies()
    target = pods[service]
    for port in target["ports"].values():
        callers = {
            name for name, pod in pods.items() if allowed(every, pod["labels"], target, port)
        }
        assert callers == ({"orchestrator"} if port == target["ports"]["grpc"] else set()), port
        assert not allowed(every, None, target, port)


def test_minio_is_reached_only_by_the_pods_that_use_the_store() -> None:
    pods, every = workloads(), policies()
    minio = pods["minio"]
    s3 = {name for name, pod in pods.items() if allowed(every, pod["labels"], minio, 9000)}
    assert s3 == MINIO_CLIENTS
    assert not any(allowed(every, pod["labels"], minio, 9001) for pod in pods.values())
    assert not allowed(every, None, minio, 9000)


def test_the_edge_is_public_and_the_only_way_to_the_orchestrator() -> None:
    pods, every = workloads(), policies()
    assert allowed(every, None, pods["envoy"], pods["envoy"]["ports"]["http"])
    orchestrator = pods["orchestrator"]
    callers = {
        name
        for name, pod in pods.items()
        if allowed(every, pod["labels"], orchestrator, orchestrator["ports"]["grpc"])
    }
    assert callers == {"envoy"}
    assert not allowed(every, None, orchestrator, orchestrator["ports"]["grpc"])


def test_only_the_orchestrator_reaches_nats_and_only_its_servers_the_routes() -> None:
    pods, every = workloads(), policies()
    nats = pods["nats"]

    def callers(port: int) -> set[str]:
        return {name for name, pod in pods.items() if allowed(every, pod["labels"], nats, port)}

    assert callers(nats["ports"]["nats"]) == {"orchestrator"}
    assert callers(nats["ports"]["cluster"]) == {"nats"}
    assert callers(nats["ports"]["monitor"]) == set()
    assert not any(allowed(every, None, nats, port) for port in nats["ports"].values())


def test_keda_operator_alone_reads_the_nats_monitoring_port() -> None:
    pods, every = workloads(), policies()
    nats = pods["nats"]
    monitor = nats["ports"]["monitor"]
    assert allowed(every, KEDA_OPERATOR, nats, monitor, KEDA)
    assert not allowed(every, {"app.kubernetes.io/name": "keda-admission-webhooks"}, nats,
                       monitor, KEDA)
    assert not allowed(every, KEDA_OPERATOR, nats, nats["ports"]["nats"], KEDA)
    assert not allowed(every, KEDA_OPERATOR, nats, monitor, MONITORING)


def test_metrics_are_scraped_from_the_monitoring_namespace_only() -> None:
    pods, every = workloads(), policies()
    scraper = {"app.kubernetes.io/name": "prometheus"}
    for name in ("orchestrator", *MODEL_SERVICES):
        metrics = pods[name]["ports"]["metrics"]
        assert allowed(every, scraper, pods[name], metrics, MONITORING), name
        assert not allowed(every, scraper, pods[name], metrics), name  # from our namespace


def test_the_reading_of_the_policies_sees_a_hole_when_there_is_one() -> None:
    """The checks above can fail: let the edge reach the voice service and it is seen."""
    pods, every = workloads(), copy.deepcopy(policies())
    voice = next(p for p in every if p["metadata"]["name"] == "voice-from-orchestrator")
    voice["spec"]["ingress"][0]["from"].append(
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}}}
    )
    assert allowed(every, pods["envoy"]["labels"], pods["voice"], 50071)
    setup_job = pods["minio-init"]  # selected by the default deny alone
    assert not allowed(policies(), None, setup_job, 8080)
    without_deny = [p for p in policies() if p["spec"]["podSelector"] != {}]
    assert allowed(without_deny, None, setup_job, 8080)
