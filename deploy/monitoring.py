"""The autoscaler's metric: Triton's cumulative queue time turned into a per-image mean by
the Prometheus adapter (a Helm values file for prometheus-community/prometheus-adapter), and
a ServiceMonitor for clusters that run the Prometheus Operator."""

from __future__ import annotations

from . import layout
from .cluster import service

# Triton counts queue time per composing model (nv_inference_queue_duration_us, cumulative
# microseconds) and requests per model, the ensemble's included. Queue time summed over the
# two steps, divided by ensemble requests, is what one image waited in queues. Idle pods
# report 0 rather than 0/0 (clamp_min), so the HPA can scale them down.
QUEUE_QUERY = (
    'sum(rate(nv_inference_queue_duration_us{<<.LabelMatchers>>,model=~"preprocess|scorer"}[2m])) by (<<.GroupBy>>)'
    f' / clamp_min(sum(rate(nv_inference_request_success{{<<.LabelMatchers>>,model="{layout.APP}"}}[2m]))'
    " by (<<.GroupBy>>), 0.001)"
)


def adapter_values() -> dict:
    rule = {
        "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_queue_duration_us$", "as": layout.QUEUE_METRIC},
        "metricsQuery": QUEUE_QUERY,
    }
    return {"rules": {"default": False, "custom": [rule]}}


def service_monitor() -> dict:
    port = next(p["name"] for p in service()["spec"]["ports"] if p["port"] == layout.METRICS_PORT)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": layout.APP, "labels": dict(layout.LABELS)},
        "spec": {
            "selector": {"matchLabels": dict(layout.LABELS)},
            "endpoints": [{"port": port, "path": "/metrics", "interval": "15s"}],
        },
    }
