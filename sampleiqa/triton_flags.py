"""The embedded Triton server's command line and environment, as data: which binary, which
flags for a given lock-down, TLS and ports, and what the python stubs are told. The process
that runs them (start, readiness, supervision, stop) is sampleiqa/server.py; the split follows
pytriton's (triton_server_config.py beside triton_server.py)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .cuda_pool import cuda_pool_args
from .runtime import environment

# What an inference client never needs: loading/unloading models, registering shared
# memory, and changing trace or log settings.
RESTRICTED = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_HEADER = "admin-key"
ADMIN_KEY_ENV = environment.ADMIN_KEY
# Every HTTP API group of Triton 2.51. SAMPLEIQA_HTTP_OPEN=health leaves only the health
# endpoints open on HTTP (a cluster's probes need them; inference stays on gRPC and TLS).
HTTP_APIS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
HTTP_OPEN_ENV = environment.HTTP_OPEN
# A Triton installed elsewhere (the GPU image's /opt/tritonserver) instead of the wheel's.
TRITONSERVER_DIR_ENV = environment.TRITONSERVER_DIR


class ServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerTLS:
    """gRPC TLS for the server: PEM files. `mutual`: clients must present a certificate
    signed by `ca`."""

    cert: str
    key: str
    ca: str | None = None
    mutual: bool = False

    def __post_init__(self):
        if self.mutual and not self.ca:
            raise ServerError("mutual TLS needs the CA that signs client certificates")

    def args(self) -> list[str]:
        args = [
            f"--grpc-use-ssl-mutual={str(self.mutual).lower()}",
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={self.cert}",
            f"--grpc-server-key={self.key}",
        ]
        return args + ([f"--grpc-root-cert={self.ca}"] if self.ca else [])


def _pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the Triton binary comes from the nvidia-pytriton wheel, which is not installed: "
            "run `pip install --no-deps nvidia-pytriton==0.7.0` (bootstrap.sh does)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def triton_paths() -> tuple[Path, Path]:
    """(tritonserver binary, backend directory), with the python stub put in place."""
    if os.environ.get(TRITONSERVER_DIR_ENV):
        root = Path(os.environ[TRITONSERVER_DIR_ENV])  # a full Triton install: its stub is in place
        return root / "bin" / "tritonserver", root / "backends"
    root = _pytriton_dir()
    binary = root / "bin" / "tritonserver"
    backends = root / "backends"
    stub = backends / "python" / "triton_python_backend_stub"
    if not stub.exists():
        # The wheel ships stubs per Python version beside the backend; the one matching
        # this interpreter goes where libtriton_python.so looks, so its RPATH resolves.
        source = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / stub.name
        if not source.exists():
            raise ServerError(f"no Triton python stub for Python {sys.version_info.major}.{sys.version_info.minor}")
        try:
            shutil.copy2(source, stub)
        except OSError as exc:
            raise ServerError(f"cannot install the python stub into {stub.parent}: {exc}") from None
    return binary, backends


def exposure_warning(host: str, tls: "ServerTLS | None", http_port: int | None, metrics_port: int | None) -> str | None:
    """What a plaintext server on a non-loopback address exposes, or None."""
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or (tls and not http_port and not metrics_port):
        return None
    plain = [name for name, on in (("gRPC", not tls), ("HTTP", http_port), ("metrics", metrics_port)) if on]
    return (
        f"serving {', '.join(plain)} without TLS on {host}: anyone who can reach this host can send images, "
        "read scores and watch the traffic. Bind 127.0.0.1, or use --tls-cert/--tls-key (HTTP and metrics "
        "have no TLS here: keep them on loopback or behind a proxy)."
    )


def http_restricted(restricted: tuple[str, ...], restrict: bool, env: dict[str, str]) -> tuple[str, ...]:
    """The HTTP APIs that need the admin key: `restricted`, or every API but those named in
    SAMPLEIQA_HTTP_OPEN (which narrows HTTP even when unrestricted)."""
    open_http = os.environ.get(HTTP_OPEN_ENV, env.get(HTTP_OPEN_ENV))
    if open_http is not None:
        named = {api.strip() for api in open_http.split(",") if api.strip()}
        if named - set(HTTP_APIS):
            raise ServerError(f"{HTTP_OPEN_ENV}: unknown {sorted(named - set(HTTP_APIS))}; choose from {HTTP_APIS}")
        return tuple(api for api in HTTP_APIS if api not in named)
    return restricted if restrict else ()


@dataclass(frozen=True)
class TritonFlags:
    """Everything Triton's command line says, for one start."""

    repository: Path
    host: str
    grpc_port: int
    http_port: int | None
    metrics_port: int | None
    exit_timeout_s: int
    tls: ServerTLS | None
    restricted: tuple[str, ...]  # gRPC APIs that need the admin key (empty: none)
    http_restricted: tuple[str, ...]
    admin_key: str
    extra_args: tuple[str, ...] = ()

    def args(self) -> list[str]:
        binary, backends = triton_paths()
        args = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        if self.restricted:
            # Visible in /proc/<pid>/cmdline to local users: it guards against remote clients.
            args.append(f"--grpc-restricted-protocol={','.join(self.restricted)}:{ADMIN_HEADER}={self.admin_key}")
        if self.tls:
            args += self.tls.args()
        if self.http_port:
            args += ["--allow-http=true", f"--http-address={self.host}", f"--http-port={self.http_port}"]
            if self.http_restricted:
                args.append(f"--http-restricted-api={','.join(self.http_restricted)}:{ADMIN_HEADER}={self.admin_key}")
        else:
            args += ["--allow-http=false"]
        if self.metrics_port:
            args += ["--allow-metrics=true", f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        else:
            args += ["--allow-metrics=false", "--allow-gpu-metrics=false", "--allow-cpu-metrics=false"]
        return args + cuda_pool_args(self.repository) + list(self.extra_args)


def stub_environment() -> dict[str, str]:
    """Environment for the server: its python stubs embed the system libpython, so they are
    told where this interpreter's packages are (model.py adds them with site.addsitedir)."""
    env = dict(os.environ)
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    env[environment.SITE_DIRS] = os.pathsep.join(dict.fromkeys(dirs))
    env.setdefault("OMP_NUM_THREADS", "1")
    # glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so
    # request buffers and crops (0.5-4 MB) then come from heaps that are never given back:
    # Triton kept ~200 MiB after a load of 12 MP photos. A fixed threshold keeps every block
    # over 256 KiB in its own mapping, returned when freed (perf/results/memory-under-load.md).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(256 * 1024))
    return env
