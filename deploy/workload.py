"""The Deployment: one `sampleiqa serve` container (and, for the GPU, the engine-building init
container), locked down: non-root, read-only root filesystem, no capabilities; the only
writable places are emptyDirs for /dev/shm (the python stubs' tensors), /tmp and the log."""

from __future__ import annotations

from sampleiqa.server import ADMIN_KEY_ENV, HTTP_OPEN_ENV

from . import layout
from .flavours import Flavour

PERIOD_S = 5


def _http_probe(path: str, period_s: int, failures: int) -> dict:
    return {
        "httpGet": {"path": path, "port": "http-health"},
        "periodSeconds": period_s,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def probes(flavour: Flavour) -> dict:
    """Startup: Triton opens no port until every model has loaded and warmed up, so the other
    probes wait for it. Liveness: only a Triton that stays unreachable for a minute is killed
    (the launcher's own restart after a stub died takes seconds; a hung Triton does not come
    back). Readiness: out of the Service within 10 s when Triton is down or a model not ready."""
    return {
        "startupProbe": _http_probe(layout.LIVE_PATH, PERIOD_S, flavour.startup_budget_s // PERIOD_S),
        "livenessProbe": _http_probe(layout.LIVE_PATH, 10, 6),
        "readinessProbe": _http_probe(layout.READY_PATH, PERIOD_S, 2),
    }


def _env(flavour: Flavour) -> list[dict]:
    admin = {
        "name": ADMIN_KEY_ENV,
        "valueFrom": {
            "secretKeyRef": {
                # optional: without the Secret the launcher picks a random key per start, so the admin
                # APIs stay closed (inference never needs them).
                "name": layout.ADMIN_SECRET,
                "key": layout.ADMIN_SECRET_KEY,
                "optional": True,
            }
        },
    }
    plain = {HTTP_OPEN_ENV: layout.HTTP_OPEN, "HOME": "/tmp", "XDG_CACHE_HOME": "/tmp/cache", **flavour.env}
    return [admin] + [{"name": k, "value": v} for k, v in plain.items()]


SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def _mounts(flavour: Flavour) -> list[dict]:
    mounts = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "logs", "mountPath": layout.LOG_DIR},
    ]
    return mounts + ([{"name": "models", "mountPath": "/models"}] if flavour.init_args else [])


def server_container(flavour: Flavour) -> dict:
    return {
        "name": "server",
        "image": flavour.image,
        "args": flavour.serve_args(),  # the image's entrypoint is `tini -- sampleiqa`
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in layout.PORT_NAMES.items()],
        "env": _env(flavour),
        "resources": flavour.resources,
        **probes(flavour),
        "securityContext": SECURITY,
        "volumeMounts": _mounts(flavour),
    }


def engine_container(flavour: Flavour) -> dict:
    return {
        "name": "build-engine",
        "image": flavour.image,
        "args": list(flavour.init_args),
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": flavour.resources,
        "securityContext": SECURITY,
        "volumeMounts": _mounts(flavour),
    }


def _volumes(flavour: Flavour) -> list[dict]:
    volumes = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": flavour.shm_size}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "logs", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    return volumes + ([{"name": "models", "emptyDir": {"sizeLimit": "4Gi"}}] if flavour.init_args else [])


def pod_spec(flavour: Flavour) -> dict:
    spec = {
        "automountServiceAccountToken": False,  # it never talks to the API server
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": layout.USER_ID,
            "runAsGroup": layout.USER_ID,
            "fsGroup": layout.USER_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Triton's exit timeout (10 s) for in-flight requests, then the launcher's cleanup.
        "terminationGracePeriodSeconds": 30,
    }
    if flavour.init_args:
        spec["initContainers"] = [engine_container(flavour)]
    spec["containers"] = [server_container(flavour)]
    if flavour.tolerations:
        spec["tolerations"] = list(flavour.tolerations)
    spec["volumes"] = _volumes(flavour)
    return spec


def deployment(flavour: Flavour) -> dict:
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(layout.METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": layout.APP, "labels": dict(layout.LABELS)},
        "spec": {
            # No `replicas`: the HPA owns it, and a re-apply must not reset its choice.
            "selector": {"matchLabels": dict(layout.LABELS)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": dict(flavour.rolling)},
            "template": {
                "metadata": {"labels": dict(layout.LABELS), "annotations": annotations},
                "spec": pod_spec(flavour),
            },
        },
    }
