"""Everything around the Deployment: the Service, the disruption budget, the autoscaler, the
NetworkPolicy, the optional TLS component and each flavour's kustomization."""

from __future__ import annotations

from . import layout
from .flavours import Flavour

_META = {"name": layout.APP, "labels": dict(layout.LABELS)}


def service() -> dict:
    # ClusterIP only: gRPC for clients in the cluster, metrics for Prometheus. The HTTP port
    # carries health answers for the kubelet and is not in the Service.
    ports = [
        {"name": "grpc", "port": layout.GRPC_PORT, "targetPort": "grpc", "appProtocol": "grpc"},
        {"name": "metrics", "port": layout.METRICS_PORT, "targetPort": "metrics"},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": dict(_META),
        "spec": {"type": "ClusterIP", "selector": dict(layout.LABELS), "ports": ports},
    }


def pods_service() -> dict:
    """Headless: its DNS name resolves to every ready pod, so one gRPC client (whose
    round_robin policy connects to every address a name resolves to) spreads its requests
    over all replicas. Through the ClusterIP Service one HTTP/2 connection lands on one pod."""
    ports = [{"name": "grpc", "port": layout.GRPC_PORT, "targetPort": "grpc", "appProtocol": "grpc"}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{layout.APP}-pods", "labels": dict(layout.LABELS)},
        "spec": {"clusterIP": "None", "selector": dict(layout.LABELS), "ports": ports},
    }


def disruption_budget() -> dict:
    # One pod at a time through drains; with the HPA's two at least, one always serves.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": dict(_META),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(layout.LABELS)}},
    }


def autoscaler(flavour: Flavour) -> dict:
    metric = {
        "type": "Pods",
        "pods": {
            "metric": {"name": layout.QUEUE_METRIC},
            "target": {"type": "AverageValue", "averageValue": str(flavour.queue_target_us)},
        },
    }
    behavior = {
        "scaleUp": {"stabilizationWindowSeconds": 30},
        # A new pod takes minutes to load (the GPU's engine build more): scale down slowly.
        "scaleDown": {
            "stabilizationWindowSeconds": 600,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
        },
    }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": dict(_META),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": layout.APP},
            "minReplicas": flavour.min_replicas,
            "maxReplicas": flavour.max_replicas,
            "metrics": [metric],
            "behavior": behavior,
        },
    }


def network_policy() -> dict:
    """gRPC from anywhere the cluster routes; metrics only from the monitoring namespace; the
    health-only HTTP port from no pod (kubelet probes come from the node, which CNIs allow)."""
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": layout.MONITORING_NAMESPACE}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": dict(_META),
        "spec": {
            "podSelector": {"matchLabels": dict(layout.LABELS)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": "grpc", "protocol": "TCP"}]},
                {"from": [monitoring], "ports": [{"port": "metrics", "protocol": "TCP"}]},
            ],
        },
    }


TLS_ARGS = ["--tls-cert", f"{layout.TLS_DIR}/tls.crt", "--tls-key", f"{layout.TLS_DIR}/tls.key"]


def tls_patch() -> list[dict]:
    """JSON patch (RFC 6902) that turns on gRPC TLS from the Secret: `serve --tls-cert/--tls-key`."""
    container = "/spec/template/spec/containers/0"
    ops = [{"op": "add", "path": f"{container}/args/-", "value": arg} for arg in TLS_ARGS]
    ops.append(
        {
            "op": "add",
            "path": f"{container}/volumeMounts/-",
            "value": {"name": "tls", "mountPath": layout.TLS_DIR, "readOnly": True},
        }
    )
    ops.append(
        {
            "op": "add",
            "path": "/spec/template/spec/volumes/-",
            "value": {"name": "tls", "secret": {"secretName": layout.TLS_SECRET, "defaultMode": 0o440}},
        }
    )
    return ops


def tls_component() -> dict:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "patches": [
            {
                "path": "tls-patch.yaml",
                "target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": layout.APP},
            }
        ],
    }


def kustomization(resources: list[str]) -> dict:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources}
