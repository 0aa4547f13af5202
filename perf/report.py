"""The report of a run: perf/results/<name>.md (tables, ratios, targets), <name>.json (every
figure of every repeat) and <name>-<model>.png (throughput vs p50/p95/p99 latency)."""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from sampleiqa.runtime.contracts import ENSEMBLE, PREPROCESS, SCORER

from .batch_stats import mean_batch
from .plots import new_axes, save
from .sweep import Report

# (what the issue asks, figure, threshold, True when the figure must reach at least the threshold)
TARGETS = (
    ("ensemble >= 0.9 x in-process pipeline", "ensemble_over_in_process", 0.9, True),
    ("ensemble >= 0.9 x slowest step alone", "ensemble_over_slowest_step", 0.9, True),
    ("scorer mean batch > 1 at concurrency >= 4 (ensemble)", "scorer_mean_batch_ensemble_c4plus", 1.0, True),
    ("ensemble >= 15 images/s", "ensemble_img_s", 15.0, True),
    ("preprocessing <= 10 ms per photo (CPU time of its one thread)", "preprocess_core_ms_per_image", 10.0, False),
)
FIGURES = {
    "ensemble_img_s": "ensemble, best level (img/s)",
    "preprocess_alone_img_s": "preprocess alone, best level (img/s)",
    "scorer_alone_img_s": "scorer alone, best level (img/s)",
    "in_process_pipeline_img_s": "in-process pipeline, best batch (img/s)",
    "ensemble_over_in_process": "ensemble / in-process pipeline",
    "ensemble_over_slowest_step": "ensemble / min(preprocess alone, scorer alone)",
    "ensemble_over_shared_core_bound": "ensemble / shared-core bound 1/(1/pre + 1/scorer)",
    "preprocess_ms_per_image": "preprocessing, wall-clock ms per photo (one thread)",
    "preprocess_core_ms_per_image": "preprocessing, CPU ms per photo (one thread)",
    "model_ms_per_image": "model, wall-clock ms per image (ORT, best batch)",
    "model_core_ms_per_image": "model, CPU ms per image (ORT, all its threads, same batch)",
    "scorer_mean_batch_ensemble_c4plus": "scorer mean executed batch, ensemble at concurrency >= 4",
    "scorer_mean_batch_alone_c4plus": "scorer mean executed batch, scorer alone at concurrency >= 4",
    "ensemble_core_ms_per_image": "ensemble, server CPU ms per image (best level)",
    "in_process_core_ms_per_image": "in-process pipeline, CPU ms per image (best batch)",
    "steps_alone_core_ms_per_image": "preprocess alone + scorer alone, server CPU ms per image",
    "in_process_cpu_over_ensemble_cpu": "CPU efficiency: in-process CPU / ensemble CPU",
    "steps_cpu_over_ensemble_cpu": "CPU efficiency: steps alone CPU / ensemble CPU",
}


def _passes(value: float, threshold: float, at_least: bool) -> bool:
    if math.isnan(value):
        return False
    return (
        value > threshold if at_least and threshold == 1.0 else (value >= threshold if at_least else value <= threshold)
    )


def summary_lines(report: Report) -> list[str]:
    lines = [f"{label}: {report.median(key):.3g}" for key, label in FIGURES.items()]
    for label, key, threshold, at_least in TARGETS:
        value = report.median(key)
        lines.append(f"target {label}: {value:.3g} -> {'holds' if _passes(value, threshold, at_least) else 'MISSES'}")
    return lines


def median_points(report: Report) -> dict[tuple[str, str], dict]:
    """Per (model, level): the median of each figure over the repeats, and the summed batch counts."""
    grouped: dict[tuple[str, str], list] = {}
    for run in report.runs:
        for p in run.points:
            grouped.setdefault((p.measurement.model, p.measurement.load.label), []).append(p)
    out = {}
    for key, points in grouped.items():
        batches: dict[int, int] = {}
        for p in points:
            for size, n in p.batches.items():
                batches[size] = batches.get(size, 0) + n
        fields = ("throughput", "p50_ms", "p95_ms", "p99_ms", "server_queue_ms", "server_compute_ms")
        out[key] = {f: statistics.median(getattr(p.measurement, f) for p in points) for f in fields}
        out[key]["server_core_ms"] = statistics.median(p.server_core_ms for p in points)
        out[key].update(batch_model=points[0].batch_model, batches=dict(sorted(batches.items())))
    return out


def _plot(points: dict, model: str, path: Path) -> bool:
    axes = new_axes()
    if axes is None:
        return False
    fig, ax = axes
    rows = [(level, v) for (m, level), v in points.items() if m == model]
    for pct in ("p50", "p95", "p99"):
        ax.plot([v["throughput"] for _, v in rows], [v[f"{pct}_ms"] for _, v in rows], marker="o", label=pct)
    for level, v in rows:
        ax.annotate(level, (v["throughput"], v["p50_ms"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    save(fig, ax, path, f"{model}: throughput vs latency", "throughput (images/s)", "latency (ms)")
    return True


def _fmt(values) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def markdown(report: Report, name: str, plots: list[str]) -> str:
    plan = report.plan
    runs = report.runs
    loads = [f"{lo:.1f}->{hi:.1f}" for lo, hi in (r.load_average for r in runs)]
    out = [
        f"# Perf run `{name}`",
        "",
        f"- command: `{plan.command}`",
        f"- when: {time.strftime('%Y-%m-%d %H:%M')}; "
        f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores; 1-min load average per run (start->end): {', '.join(loads)}",
        f"- photos: {plan.photos} from `{plan.images}`; scorer alone fed {plan.tensors} real preprocessed tensors"
        f"{' through system shared memory' if plan.shared_memory else ' over gRPC'}",
        (
            f"- perf_analyzer: {plan.analyzer.request_count} requests per level, "
            if plan.analyzer.request_count
            else f"- perf_analyzer: {plan.analyzer.measurement_ms} ms windows, "
            f"stability {plan.analyzer.stability_percent}%, "
        )
        + f"batch 1 per request; repeats: {plan.repeats} (figures are medians; ratios are taken within each run)",
        f"- in-process baselines: {plan.threads} threads, batches {list(plan.batches)}, scorer `{plan.onnx}`, "
        "the faster of ORT spinning on and off at each batch",
        "- server settings: "
        + "; ".join(
            f"{m}: {s['instances']} instance(s), queue delay {s['queue_delay_us']} us"
            + (f", {s['parameters']}" if s["parameters"] else "")
            for m, s in report.settings.items()
        ),
    ]
    left_out = [f"run {k + 1}: {', '.join(r.left_out)}" for k, r in enumerate(runs) if r.left_out]
    if left_out:
        out += [f"- left out (no stable measurement even at 100% stability): {'; '.join(left_out)}"]
    if plan.note:
        out += [f"- note: {plan.note}"]
    out += ["", "## Ratios and targets", "", "| figure | median | per run |", "|---|---|---|"]
    for key, label in FIGURES.items():
        out.append(f"| {label} | {report.median(key):.3g} | {_fmt(r.figures()[key] for r in runs)} |")
    out += ["", "| target | median | verdict |", "|---|---|---|"]
    for label, key, threshold, at_least in TARGETS:
        v = report.median(key)
        out.append(f"| {label} | {v:.3g} | {'holds' if _passes(v, threshold, at_least) else 'misses'} |")
    out += _tables(report)
    out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def _tables(report: Report) -> list[str]:
    """The sweeps' medians and the in-process baselines, as Markdown tables."""
    plan, runs = report.plan, report.runs
    out = [
        "",
        "## perf_analyzer sweeps (medians)",
        "",
        "| model | level | img/s | p50 ms | p95 ms | p99 ms | server queue ms | server compute ms "
        "| server CPU ms/img | executed batches (size: count) | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, level), v in median_points(report).items():
        batches = ", ".join(f"{s}: {n}" for s, n in v["batches"].items())
        out.append(
            f"| {model} | {level} | {v['throughput']:.1f} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} | "
            f"{v['p99_ms']:.1f} | {v['server_queue_ms']:.1f} | {v['server_compute_ms']:.1f} | "
            f"{v['server_core_ms']:.1f} | {v['batch_model']}: {batches} | "
            f"{mean_batch(v['batches']):.2f} |"
        )
    out += [
        "",
        "## In-process baselines (images/s per batch size, per run)",
        "",
        "| batch | model only img/s | pipeline img/s | model only CPU ms/img | pipeline CPU ms/img |",
        "|---|---|---|---|---|",
    ]
    for b in plan.batches:
        bl = [r.baselines for r in runs]
        out.append(
            f"| {b} | {_fmt(x.model_only[b] for x in bl)} | {_fmt(x.pipeline[b] for x in bl)} | "
            f"{_fmt(x.model_core_ms[b] for x in bl)} | {_fmt(x.pipeline_core_ms[b] for x in bl)} |"
        )
    return out


def write_report(report: Report, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    points = median_points(report)
    plots = []
    for model in (ENSEMBLE, PREPROCESS, SCORER):
        png = f"{name}-{model}.png"
        if any(m == model for m, _ in points) and _plot(points, model, out_dir / png):
            plots.append(png)
    md = out_dir / f"{name}.md"
    md.write_text(markdown(report, name, plots))
    raw = {
        "plan": {k: str(v) for k, v in asdict(report.plan).items()},
        "settings": report.settings,
        "runs": [{"figures": r.figures(), **asdict(r)} for r in report.runs],
    }
    (out_dir / f"{name}.json").write_text(json.dumps(raw, indent=1, default=str))
    return md
