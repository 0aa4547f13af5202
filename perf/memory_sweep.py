"""Server memory and throughput against client concurrency: the figure the Kubernetes limits
come from (deploy/, tests/test_deploy.py).

    python -m sampleiqa.perf.memory_sweep --repository model_repository --label shipped \\
        --points 1 8 64 256 2x128 --photos 300 --report perf/results/memory-under-load.md

For each repository: one embedded server, warmed and left idle, then for each point ("C":
one `sampleiqa score --concurrency C`; "KxC": K such clients at once, each over the photos
into its own output) the clients' images/s, the refusals their summaries count, whether every
output holds one `ok` row per photo, and the server's peak memory: per process and for the
whole server, sampled every 0.25 s from /proc/PID/smaps_rollup. The whole server's figure is
the sum of PSS (a shared page counted once: the python stubs' shared memory is mapped by
Triton too), which is what a cgroup limit sees; the sum of RSS is shown beside it. After the
last point the server idles --idle-s and its memory is compared with the warm server's.
--large-photos N adds one point over N of the photos upscaled (Lanczos) to 12 MP phone-size
JPEGs (4032x3024), at --large-concurrency: decoding them is where preprocess's memory grows.

(Over 300 lines: one study, sampling /proc while real clients run, with its report and plot.)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sampleiqa.clients.rows import read_rows
from sampleiqa.procfs import argv, child_pids, memory_mib
from sampleiqa.server import TritonServer

from .cpu_time import process_tree_cpu_s
from .inputs import copy_photos
from .plots import new_axes, save

SAMPLE_S = 0.25
SETTLE_S = 6.0
ROLES = ("triton", "preprocess", "scorer")


def role(pid: int, server_pid: int) -> str:
    """triton, or the model a python stub runs (its command line names its model.py)."""
    if pid == server_pid:
        return "triton"
    args = argv(pid)
    return Path(args[1].decode(errors="replace")).parent.parent.name if len(args) > 1 else "other"


def snapshot(server_pid: int) -> dict[int, dict]:
    """{pid: {"role", "Pss", "Rss"}} for Triton and its stubs, now."""
    found = {}
    for pid in [server_pid, *child_pids(server_pid)]:
        mem = memory_mib(pid)
        if mem:
            found[pid] = {"role": role(pid, server_pid), "Pss": mem.get("Pss", 0.0), "Rss": mem.get("Rss", 0.0)}
    return found


def totals(snap: dict[int, dict]) -> dict[str, float]:
    out = {r: sum(p["Pss"] for p in snap.values() if p["role"] == r) for r in ROLES}
    out["pss"] = sum(p["Pss"] for p in snap.values())
    out["rss"] = sum(p["Rss"] for p in snap.values())
    return out


class PeakSampler:
    """Samples the server every SAMPLE_S in a thread; keeps the peak of each figure of totals()."""

    def __init__(self, server_pid: int):
        self.server_pid, self.peak = server_pid, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in totals(snapshot(self.server_pid)).items():
                self.peak[key] = max(self.peak.get(key, 0.0), value)
            self._stop.wait(SAMPLE_S)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def settled(server_pid: int, samples: int = 4) -> dict[str, float]:
    """The median of a few samples of an idle server."""
    taken = []
    for _ in range(samples):
        taken.append(totals(snapshot(server_pid)))
        time.sleep(SAMPLE_S)
    return {k: statistics.median(t[k] for t in taken) for k in taken[0]}


def parse_point(text: str) -> tuple[int, int]:
    """ "64" -> (1 client, 64 in flight); "2x128" -> (2, 128)."""
    m = re.fullmatch(r"(?:(\d+)x)?(\d+)", text)
    if not m or int(m.group(2)) < 1 or (m.group(1) and int(m.group(1)) < 1):
        raise argparse.ArgumentTypeError(f"a point is C or KxC (K clients of concurrency C), not {text!r}")
    return int(m.group(1) or 1), int(m.group(2))


def count_ok_rows(csv: Path) -> int:
    return sum(row["status"] == "ok" for row in read_rows(csv, "csv"))


def phone_size_copies(photos: Path, n: int, dest: Path) -> Path:
    """n of the photos as 12 MP JPEGs (4032x3024, Lanczos, quality 90)."""
    import cv2

    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(photos.iterdir())[:n]:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        big = cv2.resize(image, (4032, 3024), interpolation=cv2.INTER_LANCZOS4)
        cv2.imwrite(str(dest / f"{path.stem}-12mp.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return dest


def run_point(
    server: TritonServer, clients: int, concurrency: int, photos: Path, n: int, work: Path, tag: str = ""
) -> dict:
    outs = [work / f"out-{clients}x{concurrency}{tag}-{k}.csv" for k in range(clients)]
    cmd = [
        sys.executable,
        "-m",
        "sampleiqa.cli",
        "score",
        str(photos),
        "--url",
        server.url,
        "--overwrite",
        "--concurrency",
        str(concurrency),
    ]
    cpu0, t0 = process_tree_cpu_s(server.process.pid), time.monotonic()
    with PeakSampler(server.process.pid) as sampler:
        procs = [
            subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for out in outs
        ]
        errs = [p.communicate()[1] for p in procs]
    seconds = time.monotonic() - t0
    refused = sum(int(m.group(1)) for e in errs for m in re.finditer(r"server busy: (\d+) requests refused", e))
    ok_rows = [count_ok_rows(out) for out in outs]
    if any(p.returncode for p in procs) or ok_rows != [n] * clients:
        print("\n".join(errs), file=sys.stderr)
    return {
        "clients": clients,
        "concurrency": concurrency,
        "photos": tag or "512x512",
        "images_per_s": clients * n / seconds,
        "server_cpu_ms_per_image": 1000 * (process_tree_cpu_s(server.process.pid) - cpu0) / (clients * n),
        "refused": refused,
        "rows_ok": sum(ok_rows),
        "rows_expected": clients * n,
        "exit_codes": [p.returncode for p in procs],
        "peak_mib": sampler.peak,
    }


def measure(
    repository: Path,
    points: list[tuple[int, int]],
    photos: Path,
    n: int,
    rounds: int,
    idle_s: float,
    work: Path,
    large: tuple[Path, int, int] | None = None,
) -> dict:
    with TritonServer(repository, log_file=work / f"{repository.name}.log") as server:
        pid = server.process.pid
        warm_cmd = [sys.executable, "-m", "sampleiqa.cli", "score", str(photos), "--url", server.url]
        warm_cmd += ["--out", str(work / "warm.csv"), "--overwrite", "--concurrency", "1"]
        subprocess.run(warm_cmd, capture_output=True, check=True)
        time.sleep(SETTLE_S)
        warm = settled(pid)
        runs = []
        for r in range(rounds):
            for clients, concurrency in points:
                time.sleep(SETTLE_S)  # the scorer's arena shrinks after 5 s idle: no point starts on the last one's
                runs.append(run_point(server, clients, concurrency, photos, n, work))
                last = runs[-1]
                print(
                    f"{repository.name} round {r + 1}: {clients}x{concurrency}: {last['images_per_s']:.1f} images/s, "
                    f"peak {last['peak_mib']['pss']:.0f} MiB PSS, {last['refused']} refused, "
                    f"{last['rows_ok']}/{last['rows_expected']} ok rows",
                    file=sys.stderr,
                    flush=True,
                )
        if large:
            folder, count, concurrency = large
            runs.append(run_point(server, 1, concurrency, folder, count, work, tag="12 MP"))
            print(
                f"{repository.name}: 12 MP photos at {concurrency}: peak {runs[-1]['peak_mib']['pss']:.0f} MiB PSS",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(idle_s)
        idle = settled(pid)
    return {
        "repository": str(repository),
        "warm_mib": warm,
        "idle_mib": idle,
        "idle_s": idle_s,
        "points": _by_point(runs),
    }


def _by_point(runs: list[dict]) -> list[dict]:
    """Rounds of a point merged: median images/s and CPU, peak of peaks, sums of refusals and rows."""
    merged: dict[tuple[int, int, str], list[dict]] = {}
    for run in runs:
        merged.setdefault((run["clients"], run["concurrency"], run["photos"]), []).append(run)
    out = []
    for (clients, concurrency, photos), same in merged.items():
        peak = {k: max(r["peak_mib"].get(k, 0.0) for r in same) for k in same[0]["peak_mib"]}
        out.append(
            {
                "clients": clients,
                "concurrency": concurrency,
                "photos": photos,
                "in_flight": clients * concurrency,
                "images_per_s": statistics.median(r["images_per_s"] for r in same),
                "server_cpu_ms_per_image": statistics.median(r["server_cpu_ms_per_image"] for r in same),
                "refused": sum(r["refused"] for r in same),
                "rows_ok": sum(r["rows_ok"] for r in same),
                "rows_expected": sum(r["rows_expected"] for r in same),
                "exit_codes": [c for r in same for c in r["exit_codes"]],
                "peak_mib": peak,
                "rounds": len(same),
            }
        )
    return out


def point_name(p: dict) -> str:
    name = f"{p['clients']}x{p['concurrency']}" if p["clients"] > 1 else str(p["concurrency"])
    return name if p["photos"] == "512x512" else f"{name}, {p['photos']} photos"


def report(results: dict[str, dict], path: Path) -> None:
    lines = [
        f"# Server memory under load ({time.strftime('%Y-%m-%d')})",
        "",
        "Peak memory of the whole server (sum of PSS over Triton and its python stubs; the sum of RSS "
        "counts the shared memory twice) against the clients' concurrency. `python -m "
        "sampleiqa.perf.memory_sweep` wrote this; images/s are medians over the rounds, peaks the "
        "highest seen.",
        "",
    ]
    for label, res in results.items():
        ref = next((p for p in res["points"] if p["in_flight"] == 8 and p["photos"] == "512x512"), res["points"][0])
        lines += [
            f"## {label} (`{res['repository']}`)",
            "",
            "| clients x in flight | images/s | vs 8 | server CPU ms/image | refused (retried) | ok rows | "
            "peak PSS, whole server | Triton | preprocess | scorer | peak sum of RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in res["points"]:
            m = p["peak_mib"]
            lines.append(
                f"| {point_name(p)} | {p['images_per_s']:.1f} | {p['images_per_s'] / ref['images_per_s']:.2f} | "
                f"{p['server_cpu_ms_per_image']:.0f} | {p['refused']} | {p['rows_ok']}/{p['rows_expected']} | "
                f"**{m['pss']:.0f} MiB** | {m['triton']:.0f} | {m['preprocess']:.0f} | {m['scorer']:.0f} | "
                f"{m['rss']:.0f} |"
            )
        warm, idle = res["warm_mib"]["pss"], res["idle_mib"]["pss"]
        lines += [
            "",
            f"Warm server: {warm:.0f} MiB PSS; {res['idle_s']:.0f} s after the load: {idle:.0f} MiB "
            f"({idle / warm:.2f}x).",
            "",
        ]
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    _plot(results, path.with_suffix(".png"))


def _plot(results: dict[str, dict], path: Path) -> None:
    axes = new_axes()
    if axes is None:
        return
    fig, ax = axes
    for label, res in results.items():
        line = [p for p in res["points"] if p["clients"] == 1 and p["photos"] == "512x512"]
        (drawn,) = ax.plot(
            [p["in_flight"] for p in line], [p["peak_mib"]["pss"] for p in line], marker="o", label=label
        )
        for p in res["points"]:
            if p not in line:
                ax.scatter([p["in_flight"]], [p["peak_mib"]["pss"]], marker="s", color=drawn.get_color())
                ax.annotate(
                    point_name(p),
                    (p["in_flight"], p["peak_mib"]["pss"]),
                    fontsize=7,
                    xytext=(-60, 6),
                    textcoords="offset points",
                )
    ax.set_xscale("log", base=2)
    save(
        fig,
        ax,
        path,
        "Peak server memory against requests in flight",
        "requests in flight (all clients)",
        "peak MiB (sum of PSS)",
    )


def main(argv_: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, action="append", required=True)
    p.add_argument("--label", action="append", help="a name per --repository in the report")
    p.add_argument(
        "--points", type=parse_point, nargs="+", default=[parse_point(x) for x in ("1", "8", "64", "256", "2x128")]
    )
    p.add_argument("--photos", type=int, default=300, help="BIQ2021 photos each client scores per point")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--idle-s", type=float, default=30.0, help="idle time before the last memory figure")
    p.add_argument("--large-photos", type=int, default=0, metavar="N", help="add a point over N 12 MP copies")
    p.add_argument("--large-concurrency", type=int, default=64, metavar="C")
    p.add_argument("--report", type=Path)
    args = p.parse_args(argv_)
    labels = args.label or [r.name for r in args.repository]
    results = {}
    with tempfile.TemporaryDirectory(prefix="sampleiqa-memory-") as tmp:
        photos = copy_photos(Path(tmp) / "photos", args.photos)
        large = None
        if args.large_photos:
            large = (
                phone_size_copies(photos, args.large_photos, Path(tmp) / "large"),
                args.large_photos,
                args.large_concurrency,
            )
        for label, repository in zip(labels, args.repository):
            results[label] = measure(
                repository, args.points, photos, args.photos, args.rounds, args.idle_s, Path(tmp), large
            )
    if args.report:
        report(results, args.report)
        print(f"wrote {args.report}", file=sys.stderr)
    else:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
