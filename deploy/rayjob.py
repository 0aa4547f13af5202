"""Bulk scoring on Kubernetes: a KubeRay RayJob (ray.io/v1) that starts a Ray cluster of the
deploy/docker/Dockerfile.ray image, runs `sampleiqa score --engine ray` on its head against the
Triton replicas of the cpu or gpu Deployment, and deletes the cluster when the job ends.

No credentials in it: the head (where the driver lists the inputs) and the workers (which read
the photos and write the shards) use their ServiceAccount's cloud identity (IRSA on EKS,
Workload Identity on GKE: an annotation in your overlay), and the driver passes the workers only
the SAMPLEIQA_MAX_* limits through Ray's runtime_env. Ray's own token comes from a Secret."""

from __future__ import annotations

import shlex

from sampleiqa import __version__

from . import cluster, layout

NAME = f"{layout.APP}-score"
IMAGE = f"sampleiqa-ray:{__version__}"  # deploy/docker/Dockerfile.ray
RAY_VERSION = "2.60.0"  # its base image and the [ray] extra's pin

# Placeholders for an overlay's patch of /spec/entrypoint. Upper case is no valid bucket name,
# so an unpatched job fails at its listing instead of reading or writing someone's bucket.
INPUTS, OUTPUT = "s3://BUCKET/photos/", "s3://BUCKET/sampleiqa-scores/"
WORKERS = 2
WORKER_RESOURCES = {"cpu": "4", "memory": "8Gi"}
# 3 actors per 4-core worker leave a core each for Ray's own processes; 6 x 16 requests in
# flight keep 12 replicas busy (docs/cluster.md, Capacity model: ~8 in flight per replica).
ACTORS, CONCURRENCY = 3 * WORKERS, 16


def entrypoint_args() -> list[str]:
    """The driver's command line; Ray's job supervisor runs it on the head."""
    # The headless Service: each actor's round_robin client spreads over every ready pod. A
    # short name, as the job runs in the server's namespace (from another: sampleiqa-pods.<namespace>.svc).
    url = f"{cluster.pods_service()['metadata']['name']}:{layout.GRPC_PORT}"
    return [
        "sampleiqa",
        "score",
        INPUTS,
        "--recursive",
        "--engine",
        "ray",
        "--ray-address",
        "auto",
        "--url",
        url,
        "--out",
        OUTPUT,
        "--ray-actors",
        str(ACTORS),
        "--concurrency",
        str(CONCURRENCY),
        "--resume",
    ]  # a retried or re-applied job scores only what is missing


def _env() -> list[dict]:
    # Ray 2.60 checks one shared token on every node and on `ray job submit` (docs/cluster.md,
    # Run on a cluster), kept in a Secret under the key KubeRay's own authOptions uses.
    token = {"secretKeyRef": {"name": layout.RAY_AUTH_SECRET, "key": layout.RAY_AUTH_SECRET_KEY}}
    return [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "valueFrom": token}]


def _container(name: str, resources: dict, ports: dict[str, int] | None = None) -> dict:
    # No command: KubeRay adds `ray start` to the head and workers, `ray job submit` to the submitter.
    container = {
        "name": name,
        "image": IMAGE,
        "env": _env(),
        "resources": {"requests": resources, "limits": resources},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if ports:
        container["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()]
    return container


def _pod(container: dict, ray_node: bool) -> dict:
    """A PodTemplateSpec: a Ray node (head, worker) or the submitter Job's pod."""
    spec = {
        "automountServiceAccountToken": False,  # nothing here calls the API server
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": layout.RAY_USER_ID,
            "runAsGroup": layout.RAY_GROUP_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if ray_node:  # the ServiceAccount whose cloud role reads the photos and writes the shards
        spec["serviceAccountName"] = layout.RAY_SERVICE_ACCOUNT
        # Ray's object store lives in /dev/shm (the runtime's 64 MB would push it to disk); it
        # counts against the memory limit.
        container = {**container, "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    else:
        spec["restartPolicy"] = "Never"  # a Job's pod; it needs no cloud identity
    spec["containers"] = [container]
    if ray_node:
        spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    return {"metadata": {"labels": dict(layout.RAY_LABELS)}, "spec": spec}


def cluster_spec() -> dict:
    # The head runs GCS, the dashboard and the driver (listing, manifest: ~100 MiB for a million
    # files); num-cpus 0 keeps the scoring actors on the workers.
    head = _container(
        "ray-head", {"cpu": "2", "memory": "4Gi"}, {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
    )
    workers = {
        "groupName": "scorers",
        "replicas": WORKERS,
        "minReplicas": WORKERS,
        "maxReplicas": WORKERS,
        "rayStartParams": {},
        "template": _pod(_container("ray-worker", WORKER_RESOURCES), ray_node=True),
    }
    return {
        "rayVersion": RAY_VERSION,
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": _pod(head, ray_node=True)},
        "workerGroupSpecs": [workers],
    }


def ray_job() -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": NAME, "labels": dict(layout.RAY_LABELS)},
        "spec": {
            "entrypoint": shlex.join(entrypoint_args()),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,  # the finished cluster stays 10 minutes for its logs
            "rayClusterSpec": cluster_spec(),
            # Only to give `ray job submit` the token.
            "submitterPodTemplate": _pod(
                _container("ray-job-submitter", {"cpu": "500m", "memory": "1Gi"}), ray_node=False
            ),
        },
    }


def service_account() -> dict:
    """The head's and workers' identity; the cloud role is an annotation in your overlay
    (eks.amazonaws.com/role-arn, iam.gke.io/gcp-service-account) or an EKS Pod Identity association."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": layout.RAY_SERVICE_ACCOUNT, "labels": dict(layout.RAY_LABELS)},
        "automountServiceAccountToken": False,
    }
