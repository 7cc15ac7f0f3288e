"""The Kubernetes manifests of an endpoint: valid YAML, one Deployment + Service per deployment, weighted route."""

from __future__ import annotations

import yaml

from deployments.kubernetes import endpoint_manifests, render


def test_manifests_describe_the_endpoint_and_its_weights() -> None:
    rows = [("v3", "3", "registry.local/mlops/diabetes:3", 90), ("v4", "4", "registry.local/mlops/diabetes:4", 10)]
    documents = list(yaml.safe_load_all(render(endpoint_manifests("diabetes", rows, namespace="ml"))))
    kinds = [d["kind"] for d in documents]
    assert kinds == ["Namespace", "Deployment", "Service", "Deployment", "Service", "HTTPRoute"]
    for document in documents[1:]:
        assert document["metadata"]["namespace"] == "ml"
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    for deployment, (name, version, image, _) in zip(deployments, rows, strict=True):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == image
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["securityContext"]["runAsUser"] == 65532 and container["securityContext"]["runAsNonRoot"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector == {"mlops/model": "diabetes", "mlops/deployment": name}
        assert deployment["spec"]["template"]["metadata"]["labels"]["mlops/version"] == version
        assert services[deployment["metadata"]["name"]]["spec"]["selector"] == selector
    route = documents[-1]
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("diabetes-v3", 90), ("diabetes-v4", 10)]
    assert all(b["name"] in services and b["port"] == 8080 for b in backends)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
