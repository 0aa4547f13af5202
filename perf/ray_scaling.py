"""The Ray engine against the local CLI on one machine, and the driver's memory on a big listing.

    python -m sampleiqa.perf.ray_scaling --photos 300 --rounds 3 --keys 1000000 \\
        --report perf/results/ray-scaling.md

- Throughput: one embedded Triton server and one local Ray cluster (started once, as a
  cluster would be), then `sampleiqa score` with the local engine and with `--engine ray`
  over the same photos, interleaved, `--rounds` times each; the images/s each run's summary
  prints (the scoring phase: neither a server nor a cluster start is in it). Medians and
  their ratio.
- Listing: `--keys` empty files with image names in a tree of 1,000-file folders; the peak
  RSS of a process that lists them into a run's manifest (the Ray driver's job), sampled
  20 times, against a process that holds the same listing in memory as the local
  CLI does (files.discover). A PNG of RSS against files listed goes beside the report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sampleiqa.paths import DEFAULT_REPOSITORY
from sampleiqa.procfs import all_stats, argv
from sampleiqa.server import TritonServer, free_port

from .cpu_time import process_tree_cpu_s
from .inputs import copy_photos

SAMPLEIQA = [sys.executable, "-m", "sampleiqa.cli", "score"]
# Ray 2.60 clusters check a shared token on every connection (docs/cluster.md).
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}


def rate_of(log: str) -> float:
    m = re.search(r"rows written .* \(([\d.]+) images/s\)", log)
    if not m:
        raise RuntimeError(f"no rate in the run's summary:\n{log[-2000:]}")
    return float(m.group(1))


def timed_run(args: list[str], server_pid: int, client_roots) -> dict:
    """The scoring's images/s, the whole command's wall seconds, and the CPU seconds the
    server and the client side (the CLI, or the Ray cluster's processes) spent."""
    server_cpu, client_cpu = process_tree_cpu_s(server_pid), _cpu(client_roots())
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    res = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **RAY_ENV})
    wall = time.monotonic() - start
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{res.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return {
        "rate": rate_of(res.stderr),
        "wall_s": wall,
        "server_cpu_s": process_tree_cpu_s(server_pid) - server_cpu,
        "client_cpu_s": cli_cpu + _cpu(client_roots()) - client_cpu,
    }


def _cpu(roots: list[int]) -> float:
    return sum(process_tree_cpu_s(pid) for pid in roots)


def cluster_roots(temp: Path) -> list[int]:
    """The Ray cluster's daemons (GCS, raylet, ...; the workers are the raylet's children)."""
    return [pid for pid in all_stats() if str(temp).encode() in b"\0".join(argv(pid))]


RAY = str(Path(sys.executable).parent / "ray")


def start_head(temp: Path, env: dict, extra: tuple[str, ...] = ()) -> str:
    """`ray start --head` on loopback, its files under `temp`; the cluster's address."""
    port = free_port()
    subprocess.run(
        [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
        + ["--include-dashboard", "false", "--temp-dir", str(temp), *extra],
        check=True,
        capture_output=True,
        env=env,
    )
    return f"127.0.0.1:{port}"


def ray_cluster(temp: Path) -> str:
    return start_head(temp, {**os.environ, **RAY_ENV}, ("--disable-usage-stats",))


def throughput(photos: int, rounds: int, concurrency: int, actors: int, shard_size: int, work: Path) -> dict:
    folder = copy_photos(work / "photos", photos)
    runs: dict[str, list] = {"local": [], "ray": []}
    with TritonServer(DEFAULT_REPOSITORY, log_file=work / "triton.log") as server:
        address = ray_cluster(work / "ray")
        try:
            common = [str(folder), "--url", server.url]
            pid = server.process.pid
            for r in range(rounds):
                runs["local"].append(
                    timed_run(
                        SAMPLEIQA + common + ["--out", str(work / f"local-{r}.csv"), "--concurrency", str(concurrency)],
                        pid,
                        list,
                    )
                )
                runs["ray"].append(
                    timed_run(
                        SAMPLEIQA
                        + common
                        + [  # the same flags: --concurrency per actor
                            "--out",
                            str(work / f"ray-{r}"),
                            "--engine",
                            "ray",
                            "--ray-address",
                            address,
                            "--ray-actors",
                            str(actors),
                            "--concurrency",
                            str(concurrency),
                            "--shard-size",
                            str(shard_size),
                        ],
                        pid,
                        lambda: cluster_roots(work / "ray"),
                    )
                )
                print(
                    f"round {r + 1}/{rounds}: local {runs['local'][-1]['rate']:.1f}, ray {runs['ray'][-1]['rate']:.1f} "
                    "images/s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    med = {k: {m: statistics.median(run[m] for run in v) for m in v[0]} for k, v in runs.items()}
    sizes = [p.stat().st_size for p in folder.iterdir()]
    return {
        "photos": photos,
        "rounds": rounds,
        "concurrency": concurrency,
        "actors": actors,
        "shard_size": shard_size,
        "runs": runs,
        "median": med,
        "ratio_ray_to_local": med["ray"]["rate"] / med["local"]["rate"],
        "mean_photo_bytes": sum(sizes) / len(sizes),
    }


def make_keys(root: Path, keys: int, per_folder: int = 1000) -> None:
    for start in range(0, keys, per_folder):
        folder = root / f"{start // per_folder:05d}"
        folder.mkdir(parents=True)
        for i in range(start, min(keys, start + per_folder)):
            os.close(os.open(folder / f"photo-{i:07d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))


LISTERS = {
    # The Ray driver: the listing streams into the manifest, shard by shard.
    "manifest": """
from sampleiqa.clients.listing import iter_inputs
from sampleiqa.clients.shards import Job, Output
job = Job([ROOT], True, "parquet", 1000)
Output(OUT).write_listing(job, iter_inputs(job.inputs, True), on_file=sample)
""",
    # The local CLI: every path in one list (its peak is what counts).
    "in_memory": """
from sampleiqa.clients.files import discover
n[0] = len(discover([ROOT], recursive=True))
""",
}

PROBE = """
import json, os, resource, sys, time
from sampleiqa.procfs import rss_kib
ROOT, OUT, EVERY = sys.argv[1], sys.argv[2], int(sys.argv[3])
points, n = [], [0]
def sample():
    n[0] += 1
    if n[0] % EVERY == 0:
        points.append((n[0], rss_kib(os.getpid()) / 1024))
import pyarrow.fs, pyarrow.parquet, sampleiqa.clients.ray_engine  # what the driver has loaded before it lists
base = rss_kib(os.getpid()) / 1024
start = time.monotonic()
{body}
print(json.dumps({{"files": n[0], "seconds": time.monotonic() - start, "rss_after_imports_mib": base,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "points": points}}))
"""


def listing_memory(keys: int, work: Path) -> dict:
    root = work / "keys"
    start = time.monotonic()
    make_keys(root, keys)
    print(f"made {keys} files in {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
    result = {"keys": keys}
    for name, body in LISTERS.items():
        code = PROBE.format(body=body)
        res = subprocess.run(
            [sys.executable, "-c", code, str(root), str(work / f"out-{name}"), str(max(1, keys // 20))],
            capture_output=True,
            text=True,
            check=True,
        )
        result[name] = json.loads(res.stdout)
        print(
            f"{name}: peak {result[name]['peak_rss_mib']:.0f} MiB over {result[name]['files']} files "
            f"in {result[name]['seconds']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=200)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--report", type=Path, default=Path("perf/results/ray-scaling.md"))
    p.add_argument("--skip", choices=["throughput", "listing"], action="append", default=[])
    args = p.parse_args(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="sampleiqa-ray-") as tmp:
        if "throughput" not in args.skip:
            (Path(tmp) / "t").mkdir()
            results["throughput"] = throughput(
                args.photos, args.rounds, args.concurrency, args.actors, args.shard_size, Path(tmp) / "t"
            )
        if "listing" not in args.skip:
            (Path(tmp) / "l").mkdir()
            results["listing"] = listing_memory(args.keys, Path(tmp) / "l")
    from .ray_report import write_report

    write_report(results, args.report, "python -m sampleiqa.perf.ray_scaling " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
