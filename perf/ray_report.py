"""The report of perf/ray_scaling.py: a Markdown table, the JSON beside it, and a PNG of the
driver's memory against files listed."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from .plots import new_axes, save


def write_report(results: dict, report: Path, command: str = "") -> None:
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = [f"# Ray engine on one machine ({platform.machine()}, {_cores()} cores)", "", f"`{command}`", ""]
    if "throughput" in results:
        lines += _throughput(results["throughput"])
    if "listing" in results:
        lines += _listing(results["listing"], report)
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _throughput(t: dict) -> list[str]:
    med, n = t["median"], t["photos"]
    rounds = {k: ", ".join(f"{r['rate']:.1f}" for r in t["runs"][k]) for k in ("local", "ray")}
    rows = [
        f"| {k} | {med[k]['rate']:.1f} | {rounds[k]} | "
        f"{med[k]['wall_s']:.1f} | {1000 * med[k]['server_cpu_s'] / n:.1f} | {1000 * med[k]['client_cpu_s'] / n:.1f} |"
        for k in ("local", "ray")
    ]
    return [
        f"## Throughput: {n} BIQ2021 photos (mean {t['mean_photo_bytes'] / 1024:.0f} KiB), one embedded "
        f"Triton server, `--concurrency {t['concurrency']}` (Ray: per actor, {t['actors']} actors, "
        f"shards of {t['shard_size']})",
        "",
        "| engine | median images/s (scoring) | each round | median wall s (whole command) "
        "| server CPU ms/image | client CPU ms/image |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"**Ray / local: {t['ratio_ray_to_local']:.2f}** (same run, interleaved rounds; the Ray cluster was "
        "started once, as a cluster would be; client CPU: the CLI process, or every process of the Ray "
        "cluster: GCS, raylet, driver-side workers, actors).",
        "",
    ]


def _listing(listing: dict, report: Path) -> list[str]:
    png = report.with_name(report.stem + "-listing.png")
    axes = new_axes()
    if axes:
        fig, ax = axes
        driver = listing["manifest"]
        points = [(0, driver["rss_after_imports_mib"]), *driver["points"]]
        ax.plot(
            [n for n, _ in points],
            [m for _, m in points],
            marker=".",
            label="Ray driver: listing streamed into the manifest",
        )
        ax.axhline(
            listing["in_memory"]["peak_rss_mib"],
            linestyle="--",
            color="tab:red",
            label="local CLI's listing (files.discover): its peak",
        )
        ax.set_ylim(bottom=0)
        save(fig, ax, png, f"Driver memory while listing {listing['keys']:,} files", "files listed", "RSS (MiB)")
    rows = [
        f"| {label} | {listing[k]['rss_after_imports_mib']:.0f} | {listing[k]['peak_rss_mib']:.0f} | "
        f"{listing[k]['seconds']:.0f} |"
        for k, label in (("manifest", "Ray driver (manifest, streamed)"), ("in_memory", "local CLI (in memory)"))
    ]
    return [
        f"## Listing {listing['keys']:,} files (1,000 per folder)",
        "",
        "| lister | RSS after imports, MiB | peak RSS, MiB | seconds |",
        "|---|---|---|---|",
        *rows,
        "",
        f"![RSS against files listed]({png.name})" if axes else "",
        "",
    ]
