"""Kubernetes manifests for an endpoint: a Deployment + Service per model deployment, traffic split by
a Gateway API ``HTTPRoute`` with weighted backends. Written out for a cluster; not applied here.

``python -m deployments.kubernetes [--namespace mlops] [--out DIR]`` renders the current endpoint
(the router's table and each version's ``image_ref`` tag). A canary step is then a change of the
``weight`` fields in the HTTPRoute (``kubectl apply``), which any Gateway API implementation
(Envoy Gateway, Istio, Cilium, NGINX Gateway Fabric) applies without dropping connections; Argo
Rollouts can drive the same steps with its Gateway API plugin.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

PORT = 8080


def _labels(model: str, name: str, version: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlops-model-server",
        "app.kubernetes.io/part-of": "mlops-loop",
        "mlops/model": model,
        "mlops/deployment": name,
        "mlops/version": version,
    }


def deployment_manifests(
    model: str, name: str, version: str, image: str, namespace: str, replicas: int = 2
) -> list[dict[str, Any]]:
    """Deployment + Service of one model deployment (the serving image, non-root, read-only root fs)."""
    resource = f"{model}-{name}".lower().replace("_", "-")
    labels = _labels(model, name, version)
    probe = {"httpGet": {"path": "/v2/health/ready", "port": PORT}, "periodSeconds": 5, "failureThreshold": 3}
    container = {
        "name": "server",
        "image": image,
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [{"name": "MLOPS_SERVING_HOST", "value": "0.0.0.0"}, {"name": "MLOPS_SERVING_PORT", "value": str(PORT)}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "httpGet": {"path": "/v2/health/live", "port": PORT}},
        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 60},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # the root filesystem is read-only
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": resource, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"mlops/model": model, "mlops/deployment": name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [container],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                        "terminationGracePeriodSeconds": 40,
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": resource, "namespace": namespace, "labels": labels},
            "spec": {
                "selector": {"mlops/model": model, "mlops/deployment": name},
                "ports": [{"name": "http", "port": PORT, "targetPort": PORT}],
            },
        },
    ]


def route_manifest(model: str, weights: dict[str, int], namespace: str, gateway: str) -> dict[str, Any]:
    """The endpoint: one HTTPRoute splitting traffic between the deployments' Services by weight."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": model.lower().replace("_", "-"), "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": gateway}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"name": f"{model}-{name}".lower().replace("_", "-"), "port": PORT, "weight": weight}
                        for name, weight in weights.items()
                    ],
                }
            ],
        },
    }


def endpoint_manifests(
    model: str, deployments: list[tuple[str, str, str, int]], namespace: str = "mlops", gateway: str = "mlops-gateway"
) -> list[dict[str, Any]]:
    """All manifests of an endpoint; ``deployments`` holds (name, version, image, weight)."""
    documents: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}]
    for name, version, image, _ in deployments:
        documents += deployment_manifests(model, name, version, image, namespace)
    documents.append(route_manifest(model, {name: weight for name, _, _, weight in deployments}, namespace, gateway))
    return documents


def render(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    from mlops.settings import get_settings
    from tasks.endpoint_admin import EndpointClient, admin_token
    from tasks.serving_bundle import resolve_version

    parser = argparse.ArgumentParser(prog="python -m deployments.kubernetes", description=__doc__)
    parser.add_argument("--namespace", default="mlops")
    parser.add_argument("--gateway", default="mlops-gateway", help="the Gateway the HTTPRoute attaches to")
    parser.add_argument("--out", type=Path, default=None, help="write <model>.yaml here instead of printing")
    args = parser.parse_args(argv)
    settings = get_settings()
    endpoint = EndpointClient(f"http://{settings.endpoint_host}:{settings.endpoint_port}", admin_token(settings))
    rows = []
    for deployment in endpoint.table().deployments:
        if deployment.shadow:
            continue
        tags = resolve_version(settings.tracking_uri, f"models:/{settings.model_name}/{deployment.version}").tags
        image = tags.get("image_ref")
        if not image:
            print(f"version {deployment.version} has no image: run the release flow where Docker runs", file=sys.stderr)
            return 2
        rows.append((deployment.name, deployment.version, image, deployment.weight))
    text = render(endpoint_manifests(settings.model_name, rows, args.namespace, args.gateway))
    if args.out is None:
        print(text)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{settings.model_name}.yaml").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
