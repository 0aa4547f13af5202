"""deploy/: the committed manifests are a fresh render, pass the Kubernetes 1.30 schemas (the
RayJob: KubeRay's CRD schema, its pod templates the core ones), and mean what they say:
`sampleiqa serve` started with exactly the Deployment's container arguments and environment
(loopback ports substituted for the container ports) answers the probes' paths as the probes
expect: nothing before the models are loaded, ready once they are, not ready
while the launcher restarts Triton after a stub died, ready again after it.

Not checked here (no cluster, no Docker daemon): the images build, the pods schedule, the
kubelet runs the probes, the adapter serves the metric (deploy/README.md, "Not verified")."""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml

from sampleiqa import __version__
from sampleiqa.deploy import layout, rayjob, render
from sampleiqa.deploy.cluster import TLS_ARGS, tls_patch
from sampleiqa.deploy.flavours import FLAVOURS, MEMORY_HEADROOM_MIB, MEMORY_SWEEP, measured_peak_mib
from sampleiqa.paths import DEFAULT_REPOSITORY
from sampleiqa.procfs import child_pids, stub_regions
from sampleiqa.serve_command import add_serve_arguments
from sampleiqa.server import HTTP_APIS, HTTP_OPEN_ENV, TRITONSERVER_DIR_ENV, TritonServer, free_port, triton_paths

from .helpers import REPO_ROOT, SAMPLES

K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES = "1.30.0"


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _deployment(flavour: str) -> dict:
    return _load(K8S / flavour / "deployment.yaml")


def _container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _serve_args(argv: list[str]) -> argparse.Namespace:
    assert argv[0] == "serve", argv
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_serve_arguments(parser)
    return parser.parse_args(argv[1:])


def _apply_json_patch(document: dict, ops: list[dict]) -> dict:
    """The "add" operations of RFC 6902 that the TLS component uses (kubectl may be absent)."""
    document = copy.deepcopy(document)
    for op in ops:
        assert op["op"] == "add"
        *parents, last = op["path"].strip("/").split("/")
        target = document
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if last == "-":
            target.append(op["value"])
        else:
            target[last] = op["value"]
    return document


def test_committed_manifests_are_a_fresh_render():
    assert render.stale(K8S) == [], "deploy/k8s was edited by hand or is stale: python -m sampleiqa.deploy.render"
    assert not any("&id" in text for text in render.all_files().values())  # plain YAML, no anchors


def test_the_cpu_pods_memory_follows_the_measured_sweep():
    """The limit is the measured peak plus the stated headroom (issue 25): a re-measured sweep
    without a re-render, or a limit edited by hand, fails here."""
    sweep = json.loads(MEMORY_SWEEP.read_text())
    peak = measured_peak_mib(sweep)
    resources = _container(_deployment("cpu"))["resources"]
    for kind in ("requests", "limits"):
        memory = resources[kind]["memory"]
        assert memory.endswith("Mi"), memory
        assert peak + MEMORY_HEADROOM_MIB <= int(memory[:-2]) < peak + MEMORY_HEADROOM_MIB + 256, (memory, peak)
    points = sweep["shipped"]["points"]
    assert max(p["in_flight"] for p in points) >= 256 and any(p["clients"] > 1 for p in points)
    assert all(p["rows_ok"] == p["rows_expected"] for p in points), "the measured run lost rows"
    assert peak <= 2048, f"the shipped server peaked at {peak:.0f} MiB (target: 2 GiB at any concurrency)"


def test_every_manifest_passes_the_kubernetes_schemas():
    documents = [
        (p, _load(p))
        for flavour in FLAVOURS
        for p in sorted((K8S / flavour).glob("*.yaml"))
        if p.name != "kustomization.yaml"
    ]
    with_tls = _apply_json_patch(_deployment("cpu"), _load(K8S / "components" / "tls" / "tls-patch.yaml"))
    documents.append((Path("cpu deployment + components/tls"), with_tls))
    assert len(documents) == 13  # 6 per flavour, and the TLS-patched Deployment
    for path, document in documents:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    # The validator can fail: a misspelt probe field and a port given as a string.
    broken = _deployment("cpu")
    _container(broken)["readinessProbe"]["httpGet"]["paht"] = layout.READY_PATH
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    broken = _deployment("gpu")
    _container(broken)["ports"][0]["containerPort"] = str(layout.GRPC_PORT)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_each_kustomization_lists_its_folder():
    for flavour in [*FLAVOURS, "ray"]:
        folder = K8S / flavour
        listed = _load(folder / "kustomization.yaml")["resources"]
        assert sorted(listed) == sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (CI); the Python checks above stand")
def test_kustomize_builds_each_flavour_and_the_tls_overlay(tmp_path):
    for flavour in FLAVOURS:
        out = subprocess.run(["kubectl", "kustomize", str(K8S / flavour)], capture_output=True, text=True, check=True)
        kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout))
        assert kinds == [
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "Service",
        ]
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "ray")], capture_output=True, text=True, check=True)
    assert sorted(d["kind"] for d in yaml.safe_load_all(out.stdout)) == ["RayJob", "ServiceAccount"]
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "cpu", overlay)],
                "components": [os.path.relpath(K8S / "components" / "tls", overlay)],
            }
        )
    )
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    deployment = next(d for d in yaml.safe_load_all(out.stdout) if d["kind"] == "Deployment")
    assert deployment == _apply_json_patch(_deployment("cpu"), tls_patch())


def test_the_tls_component_mounts_what_serve_reads():
    deployment = _apply_json_patch(_deployment("cpu"), tls_patch())
    args = _serve_args(_container(deployment)["args"])
    mount = next(m for m in _container(deployment)["volumeMounts"] if m["name"] == "tls")
    secret = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")["secret"]
    assert secret["secretName"] == layout.TLS_SECRET
    # kubernetes.io/tls Secrets hold tls.crt and tls.key.
    assert (args.tls_cert, args.tls_key) == (f"{mount['mountPath']}/tls.crt", f"{mount['mountPath']}/tls.key")
    assert TLS_ARGS == ["--tls-cert", args.tls_cert, "--tls-key", args.tls_key]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_probes_ports_and_the_pod_agree(flavour):
    deployment = _deployment(flavour)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    args = _serve_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.grpc_port, "http-health": args.http_port, "metrics": args.metrics_port}
    assert args.host == "0.0.0.0"  # the kubelet and the Service reach the pod's address
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["port"] for p in probes.values()} == {"http-health"}
    assert probes["readinessProbe"]["path"] == layout.READY_PATH and probes["livenessProbe"]["path"] == layout.LIVE_PATH
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # loading + warm-up, never killed for it
    env = {e["name"]: e for e in container["env"]}
    assert env[HTTP_OPEN_ENV]["value"] == "health"
    assert env["SAMPLEIQA_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == layout.ADMIN_SECRET
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == layout.USER_ID
    for c in pod.get("initContainers", []) + [container]:
        sc = c["securityContext"]
        assert (
            sc["readOnlyRootFilesystem"]
            and sc["capabilities"]["drop"] == ["ALL"]
            and not sc["allowPrivilegeEscalation"]
        )
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert {"/dev/shm", "/tmp", layout.LOG_DIR} <= set(mounts)
    dshm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
    assert dshm["medium"] == "Memory" and dshm["sizeLimit"]
    assert args.log_file.startswith(layout.LOG_DIR + "/")
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert gpus == ("1" if flavour == "gpu" else None)
    if flavour == "gpu":  # the engine is built on the pod's GPU, into the folder served
        init = pod["initContainers"][0]
        assert init["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert init["args"][init["args"].index("--out") + 1] == args.repository
        assert env[TRITONSERVER_DIR_ENV]["value"] == layout.TRITON_DIR
    else:
        assert args.repository == layout.CPU_REPOSITORY


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_service_policy_and_autoscaler_name_real_ports_and_metrics(flavour):
    container = _container(_deployment(flavour))
    names = {p["name"] for p in container["ports"]}
    service = _load(K8S / flavour / "service.yaml")
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}
    policy = _load(K8S / flavour / "networkpolicy.yaml")
    rules = {r["ports"][0]["port"]: r.get("from") for r in policy["spec"]["ingress"]}
    assert set(rules) <= names and rules["grpc"] is None
    assert rules["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": layout.MONITORING_NAMESPACE}}}
    ]
    hpa = _load(K8S / flavour / "hpa.yaml")
    rule = _load(K8S / "monitoring" / "prometheus-adapter-values.yaml")["rules"]["custom"][0]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == rule["name"]["as"] == layout.QUEUE_METRIC
    assert hpa["spec"]["scaleTargetRef"]["name"] == _deployment(flavour)["metadata"]["name"]
    monitor = _load(K8S / "monitoring" / "servicemonitor.yaml")
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_dockerfiles_match_the_pod():
    for flavour in FLAVOURS:
        text = (REPO_ROOT / "deploy" / "docker" / f"Dockerfile.{flavour}").read_text()
        assert f"USER {layout.USER_ID}:{layout.USER_ID}" in text and f"WORKDIR {layout.SOURCE_DIR}" in text
        assert '"/usr/bin/tini", "--"' in text and text.rstrip().endswith('"--grpc-port", "8001"]')
    assert f"SAMPLEIQA_TRITONSERVER_DIR={layout.TRITON_DIR}" in (REPO_ROOT / "deploy/docker/Dockerfile.gpu").read_text()


def test_tritonserver_flags_from_the_container_args(monkeypatch, tmp_path):
    """What `serve` makes of the Deployment's arguments: strict readiness, HTTP health only."""
    container = _container(_deployment("cpu"))
    args = _serve_args(container["args"])
    monkeypatch.setenv(HTTP_OPEN_ENV, "health")
    server = TritonServer(
        args.repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        admin_key="k" * 24,
    )
    command = server.command()
    assert "--strict-readiness=true" in command and "--model-control-mode=none" in command
    restricted = next(a for a in command if a.startswith("--http-restricted-api="))
    assert restricted.split("=", 1)[1].split(":")[0].split(",") == [a for a in HTTP_APIS if a != "health"]
    monkeypatch.setenv(TRITONSERVER_DIR_ENV, str(tmp_path))  # the GPU image's own Triton
    assert triton_paths() == (tmp_path / "bin" / "tritonserver", tmp_path / "backends")


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_rollouts_and_drains_keep_a_pod_serving(flavour):
    """Issue 24: a rollout starts a new pod before an old one stops, and a drain takes one pod
    at a time out of at least two, so neither is an outage longer than the clients' retries."""
    deployment = _deployment(flavour)
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    replicas = _load(K8S / flavour / "hpa.yaml")["spec"]["minReplicas"]
    assert replicas >= 2
    budget = _load(K8S / flavour / "poddisruptionbudget.yaml")
    assert (budget["apiVersion"], budget["kind"]) == ("policy/v1", "PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    spec = budget["spec"]
    allowed = spec["maxUnavailable"] if "maxUnavailable" in spec else replicas - spec["minAvailable"]
    assert isinstance(allowed, int) and 1 <= allowed <= replicas - 1, spec  # drains proceed, one pod serves


RAYJOB = K8S / "ray" / "rayjob.yaml"
RAYJOB_SCHEMA = REPO_ROOT / "deploy" / "crd" / "ray.io_rayjobs.v1.schema.yaml"


def _strict(schema):
    """An object schema with properties takes no others, as the API server's strict field
    validation (kubectl's default) refuses unknown fields; the cut subtrees stay open."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


def _validate_rayjob(job: dict) -> None:
    """The RayJob CRD's own schema (KubeRay's, vendored), then each pod template as the core/v1
    PodTemplateSpec it is, with the Kubernetes schemas."""
    schema = _strict(_load(RAYJOB_SCHEMA)["openAPIV3Schema"])
    jsonschema.validate(job, schema, cls=jsonschema.Draft7Validator)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for name, template in _ray_templates(job).items():
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template},
            KUBERNETES,
            strict=True,
        )


def _ray_templates(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return {
        "head": cluster["headGroupSpec"]["template"],
        **{group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]},
        "submitter": job["spec"]["submitterPodTemplate"],
    }


def test_the_rayjob_passes_its_crd_schema_and_the_pod_schemas():
    job = _load(RAYJOB)
    _validate_rayjob(job)
    assert len(_ray_templates(job)) == 3
    kubernetes_validate.validate(_load(K8S / "ray" / "serviceaccount.yaml"), KUBERNETES, strict=True)
    # The checks can fail: a misspelt field, a number as a string, a missing required field, a
    # misspelt container field inside a pod template.
    for break_it in (
        lambda j: j["spec"].update(shutdownAfterJobFinish=True),
        lambda j: j["spec"].update(ttlSecondsAfterFinished="600"),
        lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
        lambda j: j["spec"].pop("entrypoint"),
        lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
            imagePullPolcy="Always"
        ),
    ):
        broken = copy.deepcopy(job)
        break_it(broken)
        with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
            _validate_rayjob(broken)


def test_the_rayjob_runs_sampleiqa_score_on_ray_against_the_servers():
    """The entrypoint is a command line the project's own CLI takes, aimed at the headless
    Service's gRPC port, resumable, and sized to the workers it asks for."""
    from sampleiqa.cli import build_parser

    job = _load(RAYJOB)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "sampleiqa"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.engine, args.ray_address, args.resume) == ("score", "ray", "auto", True)
    assert args.paths and all(p.startswith("s3://") for p in args.paths) and args.out.startswith("s3://")
    [url] = args.url
    host, port = url.rsplit(":", 1)
    assert host == _load(K8S / "cpu" / "service-pods.yaml")["metadata"]["name"] and int(port) == layout.GRPC_PORT
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # actors go to the workers
    worker_cpus = sum(
        int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) * g["minReplicas"]
        for g in cluster["workerGroupSpecs"]
    )
    assert args.ray_actors * args.ray_actor_cpus < worker_cpus  # a core left for Ray's own processes


def test_the_ray_pods_run_the_ray_image_with_their_own_identity():
    job = _load(RAYJOB)
    dockerfile = (REPO_ROOT / "deploy" / "docker" / "Dockerfile.ray").read_text()
    assert f"FROM rayproject/ray:{rayjob.RAY_VERSION}-" in dockerfile and f"-t {rayjob.IMAGE} " in dockerfile
    assert rayjob.IMAGE == f"sampleiqa-ray:{__version__}"
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == rayjob.RAY_VERSION
    assert f"USER {layout.RAY_USER_ID}:{layout.RAY_GROUP_ID}" in dockerfile
    account = _load(K8S / "ray" / "serviceaccount.yaml")["metadata"]["name"]
    server_selector = _deployment("cpu")["spec"]["selector"]["matchLabels"]
    for name, template in _ray_templates(job).items():
        pod = template["spec"]
        assert [c["image"] for c in pod["containers"]] == [rayjob.IMAGE], name
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == layout.RAY_USER_ID
        assert not server_selector.items() <= template["metadata"]["labels"].items(), name  # not a server pod
        # Head and workers read and write the buckets as the ServiceAccount's cloud role; the
        # submitter only calls Ray's dashboard.
        assert pod.get("serviceAccountName") == (None if name == "submitter" else account), name
    # No runtime_env from the manifest either: the workers' only environment is their pods'.
    assert "runtimeEnvYAML" not in job["spec"]


def _env_vars(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from value
            yield from _env_vars(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_vars(item)


def test_no_manifest_carries_cloud_credentials_or_secret_values():
    """Cloud identity comes from the pods' ServiceAccount (IRSA, Workload Identity), never
    from variables; secrets (admin key, Ray token) come from Secrets, never from a value."""
    paths = sorted(K8S.rglob("*.yaml"))
    assert any(p.parent.name == "ray" for p in paths)
    for path in paths:
        text = path.read_text()
        assert "AWS_" not in text and "GOOGLE_" not in text, path
        for env in _env_vars(list(yaml.safe_load_all(text))):
            assert not env["name"].startswith(("AWS_", "GOOGLE_")), (path, env)
            if any(word in env["name"] for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
                assert "secretKeyRef" in env.get("valueFrom", {}), (path, env)


# --- the real launcher with the Deployment's arguments -------------------------------------------


def _http(port: int, path: str, headers: dict | None = None) -> int | str:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {}), timeout=3
        ) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return "down"


def _until(predicate, timeout_s: float, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        seen.append(predicate())
        if seen[-1] is True:
            return seen
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s}s: last {seen[-5:]}")


class Pod:
    """`sampleiqa serve` as the container runs it: its args and plain env, ports on loopback."""

    def __init__(self, tmp: Path):
        container = _container(_deployment("cpu"))
        self.ports = {name: free_port() for name in layout.PORT_NAMES}
        numbers = {str(port): str(self.ports[name]) for name, port in layout.PORT_NAMES.items()}
        swap = {
            "0.0.0.0": "127.0.0.1",
            layout.CPU_REPOSITORY: str(DEFAULT_REPOSITORY),
            layout.LOG_FILE: str(tmp / "triton.log"),
            **numbers,
        }
        self.argv = [swap.get(a, a) for a in container["args"]]
        assert sum(a != b for a, b in zip(self.argv, container["args"])) == 6  # only ports, host, paths
        self.env = {
            **os.environ,
            **{e["name"]: e["value"] for e in container["env"] if "value" in e},
            "HOME": str(tmp),
            "XDG_CACHE_HOME": str(tmp / "cache"),
            "SAMPLEIQA_ADMIN_KEY": "admin-" + "k" * 20,
        }
        self.probes = {k: container[k] for k in ("livenessProbe", "readinessProbe")}
        self.process: subprocess.Popen | None = None
        self.output = tmp / "serve.out"

    def start(self) -> None:
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sampleiqa.cli", *self.argv], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def probe(self, kind: str) -> int | str:
        """What the kubelet's liveness or readiness probe gets: the Deployment's path and port."""
        get = self.probes[{"live": "livenessProbe", "ready": "readinessProbe"}[kind]]["httpGet"]
        return _http(self.ports[get["port"]], get["path"])

    def stubs(self) -> list[int]:
        tritons = [pid for pid in child_pids(self.process.pid)]
        return [stub for triton in tritons for stub in stub_regions(triton)]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = Pod(tmp_path_factory.mktemp("pod"))
    pod.start()
    try:
        # Loading: the probes' port is closed, so readiness (and liveness) fail; startup waits.
        loading = _until(lambda: pod.probe("ready") == 200 or pod.probe("ready"), 120, every_s=0.1)
        pod.seen_while_loading = loading[:-1]
        # The launcher supervises the stubs once its own readiness check has passed, which can be a
        # few seconds after Triton's (its gRPC client backs off while the port is closed).
        _until(lambda: "SampleIQA serving on" in pod.output.read_text(), 30)
    except BaseException:
        pod.stop()
        raise
    yield pod
    if pod.process.poll() is None:
        pod.stop()


@pytest.mark.server
def test_probes_answer_as_the_deployment_expects(pod):
    assert pod.seen_while_loading and set(pod.seen_while_loading) == {"down"}, pod.seen_while_loading
    assert pod.probe("live") == 200 and pod.probe("ready") == 200
    http = pod.ports["http-health"]
    # Health only on HTTP: inference and metadata need the admin key (gRPC is the clients' port).
    assert _http(http, "/v2/models/sampleiqa") == 403
    assert _http(http, "/v2/models/sampleiqa", {"admin-key": pod.env["SAMPLEIQA_ADMIN_KEY"]}) == 200


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and not line.startswith("#")
    }


@pytest.mark.server
def test_grpc_scores_and_metrics_carry_the_autoscalers_series(pod):
    """The adapter's query divides queue time of preprocess + scorer by the ensemble's requests:
    those series exist, and the ensemble's counter counts requests."""
    from sampleiqa.clients import ScoringClient

    queue = [f'nv_inference_queue_duration_us{{model="{m}",version="1"}}' for m in ("preprocess", "scorer")]
    requests = 'nv_inference_request_success{model="sampleiqa",version="1"}'
    before = _metrics(pod.ports["metrics"])
    with ScoringClient(f"127.0.0.1:{pod.ports['grpc']}", timeout_s=60) as client:
        results = [
            client.score((SAMPLES / name).read_bytes()) for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg")
        ]
    assert all(0 <= r.score <= 1 for r in results)
    deadline = time.monotonic() + 10  # Triton counts an ensemble request once it is torn down, after its response
    while (after := _metrics(pod.ports["metrics"]))[requests] - before.get(
        requests, 0
    ) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert after[requests] - before.get(requests, 0) == 3
    assert all(after[q] >= before.get(q, 0) for q in queue)
    assert (
        layout.QUEUE_METRIC
        and "nv_inference_queue_duration_us" in render.all_files()["monitoring/prometheus-adapter-values.yaml"]
    )


@pytest.mark.server
def test_grpc_health_service_answers_serving(pod):
    """Triton 2.51 implements grpc.health.v1 (a kubelet `grpc:` probe would work without TLS;
    the manifests use HTTP probes because the kubelet's gRPC probe cannot speak TLS)."""
    with grpc.insecure_channel(f"127.0.0.1:{pod.ports['grpc']}") as channel:
        reply = channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5)
    assert reply == b"\x08\x01"  # field 1 (status) = SERVING


@pytest.mark.server
def test_readiness_drops_while_the_launcher_restarts_triton_and_liveness_outlasts_it(pod):
    stubs = pod.stubs()
    assert len(stubs) == 3  # 2 preprocess instances + 1 scorer
    started = time.monotonic()
    os.kill(stubs[0], signal.SIGKILL)
    _until(lambda: pod.probe("ready") != 200, 10, every_s=0.1)
    assert "restarting Triton" in pod.output.read_text()
    _until(lambda: pod.probe("ready") == 200, 120, every_s=0.2)
    outage = time.monotonic() - started
    liveness = _container(_deployment("cpu"))["livenessProbe"]
    assert outage < liveness["periodSeconds"] * liveness["failureThreshold"], outage
    assert pod.process.poll() is None and set(pod.stubs()).isdisjoint(stubs)


@pytest.mark.server
def test_sigterm_stops_the_pod_cleanly(pod):
    assert pod.stop() == 0
    assert pod.probe("live") == "down" and pod.probe("ready") == "down"


def test_nothing_imports_deploy_and_its_functions_are_short():
    """deploy/ is the top floor (tests/test_architecture.py does not scan it yet)."""
    import ast

    for folder in ("sampleiqa", "build", "clients", "training", "perf"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            assert "sampleiqa.deploy" not in path.read_text(), path
    for path in (REPO_ROOT / "deploy").glob("*.py"):
        tree = ast.parse(path.read_text())
        assert path.read_text().count("\n") <= 300, path
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 60, f"{path.name}: {node.name}"
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sampleiqa"):
                assert not any(a.name.startswith("_") and not a.name.startswith("__") for a in node.names), (
                    f"{path.name}: private import"
                )


@pytest.mark.server
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare for a private mount namespace"
)
def test_the_cpu_pod_serves_on_a_read_only_root_with_only_its_volumes_writable(tmp_path):
    """readOnlyRootFilesystem, as near as this machine gets: in a private mount namespace the
    root is remounted read-only and each of the container's volumeMounts is a fresh tmpfs;
    `serve` with the Deployment's arguments (log file included) must load, warm up and score."""
    pod = Pod(tmp_path)
    pod.argv = [a if a != str(tmp_path / "triton.log") else layout.LOG_FILE for a in pod.argv]
    mounts = [m["mountPath"] for m in _container(_deployment("cpu"))["volumeMounts"]]
    script = ""
    for path in mounts:  # a folder the host lacks is made inside a tmpfs over its parent, not on the host
        if not Path(path).is_dir():
            script += f"mount -t tmpfs -o size=1m tmpfs {Path(path).parent} && mkdir {path} && "
        script += f"mount -t tmpfs -o size=1g tmpfs {path} && "
    script += f"mount -o remount,bind,ro / && ! touch {DEFAULT_REPOSITORY}/written && "
    script += "exec " + " ".join([sys.executable, "-m", "sampleiqa.cli", *pod.argv])
    env = {**pod.env, "HOME": "/tmp", "XDG_CACHE_HOME": "/tmp/cache"}
    with open(pod.output, "wb") as out:
        pod.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child=SIGTERM", "bash", "-c", script],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _until(lambda: pod.probe("ready") == 200 or pod.process.poll() is not None, 120)
        assert pod.probe("ready") == 200, pod.output.read_text()[-2000:]
        from sampleiqa.clients import ScoringClient

        with ScoringClient(f"127.0.0.1:{pod.ports['grpc']}", timeout_s=60) as client:
            assert client.score((SAMPLES / "astronaut.jpg").read_bytes()).ok
    finally:
        for serve in child_pids(pod.process.pid):  # unshare ignores SIGTERM while it waits: stop `serve` itself
            os.kill(serve, signal.SIGTERM)
        assert pod.process.wait(60) == 0
    assert not (DEFAULT_REPOSITORY / "written").exists()


def test_the_headless_service_resolves_to_the_pods_grpc_port():
    headless = _load(K8S / "cpu" / "service-pods.yaml")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["selector"] == layout.LABELS
    assert [p["port"] for p in headless["spec"]["ports"]] == [layout.GRPC_PORT]
