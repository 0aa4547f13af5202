"""What the containers look like from outside: ports, paths, names, the user. The manifests,
the Dockerfiles (deploy/docker/) and the tests read these; change one here, re-render, rebuild."""

from __future__ import annotations

APP = "sampleiqa"  # the Deployment, Service, PDB, HPA and NetworkPolicy are all named this
LABELS = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "server"}

# Container ports (Triton's usual numbers). gRPC carries inference; HTTP is opened only for the
# kubelet's probes (SAMPLEIQA_HTTP_OPEN=health: every other HTTP API needs the admin key);
# metrics is Prometheus text for the autoscaler, reachable inside the cluster only.
GRPC_PORT, HTTP_PORT, METRICS_PORT = 8001, 8000, 8002
PORT_NAMES = {"grpc": GRPC_PORT, "http-health": HTTP_PORT, "metrics": METRICS_PORT}

# Triton's health endpoints (KServe v2 protocol). Neither answers until every model has
# loaded (Triton opens its endpoints after loading: checked against the 2.51 binary), nor while
# the launcher restarts Triton after a python stub died; /ready is false when a model is not
# (--strict-readiness=true, which `sampleiqa serve` always passes).
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
HTTP_OPEN = "health"  # the value of sampleiqa.server.HTTP_OPEN_ENV in the pod

USER_ID = 10001  # the non-root user both server images create (deploy/docker/Dockerfile.cpu, .gpu)
SOURCE_DIR = "/opt/sampleiqa"  # the checkout inside both images (installed editable)
CPU_REPOSITORY = f"{SOURCE_DIR}/model_repository"  # baked into the CPU image
GPU_REPOSITORY = "/models/sampleiqa"  # built at pod start by the init container (emptyDir)
SCORER_ONNX = f"{SOURCE_DIR}/model_repository/scorer/1/model.onnx"  # what the GPU engine is built from
TRITON_DIR = "/opt/tritonserver"  # the NVIDIA image's own Triton (sampleiqa.server.TRITONSERVER_DIR_ENV)
LOG_DIR = "/var/log/sampleiqa"
LOG_FILE = f"{LOG_DIR}/triton.log"

ADMIN_SECRET, ADMIN_SECRET_KEY = "sampleiqa-admin", "admin-key"
TLS_SECRET = "sampleiqa-tls"  # kubernetes.io/tls: tls.crt, tls.key
TLS_DIR = "/etc/sampleiqa/tls"

# The autoscaler's metric: mean time an image waits in the queues of preprocess and scorer,
# in microseconds per ensemble request (deploy/monitoring/prometheus-adapter-values.yaml).
QUEUE_METRIC = "sampleiqa_queue_us_per_request"
MONITORING_NAMESPACE = "monitoring"

# Bulk scoring (`sampleiqa score --engine ray`, deploy/k8s/ray/): a KubeRay RayJob whose head and
# workers run deploy/docker/Dockerfile.ray. Their own component label keeps the server's
# selectors (Services, PDB, NetworkPolicy) off them.
RAY_LABELS = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "bulk-scoring"}
RAY_USER_ID, RAY_GROUP_ID = 1000, 100  # Ray's image: user `ray`, group `users` (Dockerfile.ray: USER 1000:100)
RAY_SERVICE_ACCOUNT = f"{APP}-ray"  # the head's and workers' cloud identity (IRSA, Workload Identity)
RAY_AUTH_SECRET, RAY_AUTH_SECRET_KEY = f"{APP}-ray-auth", "auth_token"  # RAY_AUTH_TOKEN (the key KubeRay's own uses)
