"""The embedded Triton server: the real tritonserver 2.51 binary from the nvidia-pytriton wheel.

(Over 300 lines: one process's life, whose start, readiness, supervision and stop share its
state; its flags and environment as data are in triton_flags.py, /proc and shm in procfs.py.)

Used by `sampleiqa serve`, by `sampleiqa score` when no --url is given, and by the tests.
It binds loopback by default, logs to a file, waits for the ensemble to be ready, and
stops its child on exit. The child also gets SIGTERM if its parent dies, even by SIGKILL
(PR_SET_PDEATHSIG, set by util-linux `setpriv` rather than a Python preexec_fn, which can
stall on gRPC's fork handlers). The kernel ties that signal to the *thread* that started
the server: call start() from a thread that lives as long as the server should.

Locked down by default: loopback, no model control, HTTP and metrics off, and the gRPC
(and HTTP, when on) model-repository, shared-memory, trace and logging APIs refused
unless a request carries the admin key (gRPC header `triton-grpc-protocol-admin-key`, HTTP
header `admin-key`: see TritonServer.admin_headers). Inference, health, metadata and
statistics stay open. A non-loopback address without TLS is logged as a warning.
SAMPLEIQA_HTTP_OPEN=health narrows HTTP to its health endpoints (a cluster's probes); every
other HTTP API then needs the key. SAMPLEIQA_TRITONSERVER_DIR runs another Triton install
(NVIDIA's image: /opt/tritonserver) instead of the wheel's.

Supervised: Triton 2.51 never replaces a python-backend stub that died (the OOM killer,
a crash); the server and its models stay READY while every request through that instance
fails. A watcher thread notices a stub gone within half a second and restarts Triton on
the same ports (clients see UNAVAILABLE and retry meanwhile).

Private: the python backend's shared-memory regions (which hold the images being scored)
are created 0644 by boost.interprocess whatever the umask; the launcher makes each 0600
as soon as it appears, before the server reports ready, and unlinks them when the server
stops, even after a SIGKILL. Logs are 0600 in a 0700 folder.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sampleiqa.paths import DEFAULT_REPOSITORY
from sampleiqa.runtime.contracts import ENSEMBLE

from .procfs import SHM, alive, make_private, orphans_of, stub_regions
from .runtime.admission import credits_path
from .triton_flags import (  # noqa: F401  (the names callers import from here)
    ADMIN_HEADER,
    ADMIN_KEY_ENV,
    HTTP_APIS,
    HTTP_OPEN_ENV,
    RESTRICTED,
    TRITONSERVER_DIR_ENV,
    ServerError,
    ServerTLS,
    TritonFlags,
    exposure_warning,
    http_restricted,
    stub_environment,
    triton_paths,
)

log = logging.getLogger(__name__)


def default_log_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sampleiqa"


def open_private_log(path: Path) -> int:
    """An append descriptor on a 0600 log; a folder created for it is 0700."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # an existing log keeps no wider mode
    return fd


KEPT_LOGS = 20  # default log names carry the (random) port, so old ones would pile up


def prune_logs(folder: Path, keep: int = KEPT_LOGS) -> None:
    """Delete all but the `keep` most recently written default-named Triton logs in folder."""
    logs = sorted(folder.glob("triton-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in logs[keep:]:
        old.unlink(missing_ok=True)


def start_embedded(repository: str | Path, command: str, **kwargs) -> "TritonServer | None":
    """Start the embedded server for a CLI command; on failure say why and return None."""
    server = TritonServer(repository, **kwargs)
    print(f"starting the embedded Triton server ({repository}) ...", file=sys.stderr)
    try:
        server.start()
    except ServerError as exc:
        print(f"sampleiqa {command}: the embedded server did not start: {exc}", file=sys.stderr)
        return None
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "SIGTERM", "--"] if setpriv else []


class TritonServer:
    def __init__(
        self,
        repository: str | Path = DEFAULT_REPOSITORY,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        log_file: str | Path | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        exit_timeout_s: int = 10,
        tls: ServerTLS | None = None,
        admin_key: str | None = None,
        restrict: bool = True,
        open_apis: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        supervise: bool = True,
    ):
        """`admin_key`: the header value that unlocks the RESTRICTED APIs (default: the
        SAMPLEIQA_ADMIN_KEY environment variable, else a random key for this start).
        `open_apis`: RESTRICTED entries left open (the perf harness's own loopback server opens
        "shared-memory": perf_analyzer cannot send a gRPC admin header).
        `env`: extra environment for Triton and its python stubs (e.g. SAMPLEIQA_MAX_PIXELS).
        `supervise`: restart Triton when one of its python-backend stubs dies."""
        self.repository = Path(repository).resolve()
        self.host = host
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.default_log = not log_file
        self.log_file = Path(log_file) if log_file else default_log_dir() / f"triton-{self.grpc_port}.log"
        self.extra_args = list(extra_args)
        self.exit_timeout_s = exit_timeout_s
        self.tls = tls
        self.restrict = restrict
        unknown = set(open_apis) - set(RESTRICTED)
        if unknown:
            raise ServerError(f"open_apis: unknown {sorted(unknown)}; choose from {RESTRICTED}")
        self.restricted = tuple(api for api in RESTRICTED if api not in open_apis)
        self.admin_key = admin_key or os.environ.get(ADMIN_KEY_ENV) or secrets.token_urlsafe(24)
        if restrict and not re.fullmatch(r"[A-Za-z0-9._~+/-]{16,}", self.admin_key):
            # It rides in a flag (":" and "=" are separators there) and in a gRPC header.
            raise ServerError("the admin key must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / -")
        self.env = dict(env or {})
        self._log_offset = 0
        self.process: subprocess.Popen | None = None
        self.stub_pids: list[int] = []  # its python-backend stubs, as started
        self.regions: set[str] = set()  # their shared-memory regions, to unlink at stop
        self.supervise = supervise
        self.restarts = 0
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def flags(self) -> TritonFlags:
        return TritonFlags(
            self.repository,
            self.host,
            self.grpc_port,
            self.http_port,
            self.metrics_port,
            self.exit_timeout_s,
            self.tls,
            self.restricted if self.restrict else (),
            self.http_restricted(),
            self.admin_key,
            tuple(self.extra_args),
        )

    def command(self) -> list[str]:
        return [*_die_with_parent(), *self.flags().args()]

    def http_restricted(self) -> tuple[str, ...]:
        return http_restricted(self.restricted, self.restrict, self.env)

    def start(self, timeout_s: float = 180.0) -> "TritonServer":
        if not (self.repository / ENSEMBLE / "config.pbtxt").exists():
            raise ServerError(f"{self.repository} is not a SampleIQA model repository (no {ENSEMBLE}/config.pbtxt)")
        warning = exposure_warning(self.host, self.tls, self.http_port, self.metrics_port)
        if warning:
            log.warning(warning)
        self._stopping.clear()
        self._launch(timeout_s)
        if self.supervise:
            self._watcher = threading.Thread(target=self._watch, name="sampleiqa-triton-watch", daemon=True)
            self._watcher.start()
        return self

    def _launch(self, timeout_s: float) -> None:
        if self.default_log:
            prune_logs(self.log_file.parent)
        log_fd = open_private_log(self.log_file)  # creates the folder 0700
        self._log_offset = os.lseek(log_fd, 0, os.SEEK_END)
        cmd = self.command()
        log.info("starting Triton on %s (log: %s)", self.url, self.log_file)
        self.process = subprocess.Popen(
            cmd,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**stub_environment(), **self.env},
        )
        os.close(log_fd)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self._terminate()
            raise
        self.stub_pids = list(self._scan_stubs())

    def _scan_stubs(self) -> dict[int, str]:
        """The running server's stubs; their regions made private and remembered."""
        stubs = stub_regions(self.process.pid) if self.process is not None else {}
        for region in stubs.values():
            if region not in self.regions:
                make_private(region)
                self.regions.add(region)
        return stubs

    MAX_RESTARTS = 5  # within RESTART_WINDOW_S; past that a stub dies as it starts: stop trying
    RESTART_WINDOW_S = 600

    def _watch(self) -> None:
        recent: list[float] = []
        while not self._stopping.wait(0.5):
            with self._lock:
                proc = self.process
                if proc is None or proc.poll() is not None:
                    continue  # stopped, or Triton itself died: stop() and `serve` handle that
                dead = [pid for pid in self.stub_pids if not alive(pid)]
                if not dead or proc.poll() is not None:  # stubs die with a dying Triton: not ours to restart
                    continue
                now = time.monotonic()
                recent = [t for t in recent if now - t < self.RESTART_WINDOW_S] + [now]
                if len(recent) > self.MAX_RESTARTS:
                    log.error(
                        "python-backend stubs keep dying (%d restarts in %d s): stopping Triton",
                        self.MAX_RESTARTS,
                        self.RESTART_WINDOW_S,
                    )
                    self._terminate()
                    return
                log.error(
                    "python-backend stub %s died (Triton does not replace it): restarting Triton on %s", dead, self.url
                )
                self._terminate()
                try:
                    self._launch(180.0)
                    self.restarts += 1
                    log.warning("Triton restarted on %s (%d restarts)", self.url, self.restarts)
                except (ServerError, OSError) as exc:
                    log.error("Triton did not come back: %s", exc)
                    return

    def wait_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout_s
        # Reconnect quickly while the port is still closed: gRPC's default backoff (1 s, then
        # longer) would notice a ready server seconds late, and the watcher only starts then.
        client = grpcclient.InferenceServerClient(
            self.url,
            channel_args=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 100),
            ],
        )
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerError(
                        f"Triton exited with code {self.process.returncode} while starting:\n{self.log_tail()}"
                    )
                # Private before any client can send an image; remembered, so that a start
                # that fails (Triton killed or crashed while loading) stops its stubs too.
                self.stub_pids = sorted(set(self.stub_pids) | set(self._scan_stubs()))
                try:
                    # A TLS server may want a client certificate this probe does not hold; Triton
                    # starts its gRPC service only once every model has loaded, so its log says ready.
                    if (
                        self._log_says_started()
                        if self.tls
                        else (client.is_server_ready() and client.is_model_ready(ENSEMBLE))
                    ):
                        log.info("Triton ready on %s", self.url)
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        raise ServerError(f"Triton was not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def admin_headers(self, http: bool = False) -> dict[str, str]:
        """Request headers that unlock the RESTRICTED APIs (Triton prefixes the gRPC one)."""
        return {ADMIN_HEADER if http else f"triton-grpc-protocol-{ADMIN_HEADER}": self.admin_key}

    def _log_says_started(self) -> bool:
        with open(self.log_file, "rb") as f:
            f.seek(self._log_offset)
            return b"Started GRPCInferenceService at" in f.read()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def running(self) -> bool:
        with self._lock:  # a restart holds the lock: the server is still meant to run
            return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then wait for in-flight work (Triton's exit timeout), then SIGKILL."""
        self._stopping.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        self._watcher = None
        with self._lock:
            self._terminate()

    def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                log.warning("Triton did not exit in time; killing it")
                proc.kill()
                proc.wait()
        # A Triton that was killed (OOM killer, SIGKILL) or crashed, even while it loaded,
        # leaves its stubs running, each holding a model and its memory, and their
        # shared-memory regions in /dev/shm.
        left = orphans_of(proc.pid) if proc is not None else {}
        self.regions.update(left.values())
        for pid in left:
            log.warning("stopping python-backend stub %d left by a killed Triton", pid)
            os.kill(pid, signal.SIGKILL)
        self.stub_pids = sorted(set(self.stub_pids) | set(left))
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in self.stub_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for region in self.regions:
            (SHM / region).unlink(missing_ok=True)
        self.regions.clear()
        if proc is not None:
            credits_path(proc.pid).unlink(missing_ok=True)  # the stubs' crop credits (sampleiqa.runtime.admission)
        self.stub_pids = []

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
