"""`sampleiqa evaluate`: PLCC/SROCC/KRCC of a model on a labelled set.

The model is a training checkpoint (torch), an exported ONNX scorer (ONNX Runtime, with
the serving preprocessing in process), or the served ensemble (`--url`, through the gRPC
client). All three see the same 448 crop. Images that fail are reported and left out of
the correlations, never silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sampleiqa.progress import Progress
from sampleiqa.runtime.preprocessing import PreprocessError, preprocess_file

from .data.datasets import LabelledSet
from .metrics import evaluate_scores

Predictions = tuple[np.ndarray, dict[str, str]]  # scores (NaN = failed), path -> error


def predict_checkpoint(checkpoint: str | Path, dataset: LabelledSet, batch_size: int = 32) -> Predictions:
    from .checkpoint import load_scorer
    from .data.cache import build_cache
    from .prediction import predict_cached

    scorer, _ = load_scorer(checkpoint)
    data = build_cache(dataset)
    scores = predict_cached(scorer, data, batch_size, progress=True)  # no_grad inside
    by_path = dict(zip(data.paths, scores))
    return np.array([by_path.get(str(s.path), np.nan) for s in dataset.samples]), dict(data.unreadable)


def predict_onnx(onnx_path: str | Path, dataset: LabelledSet, batch_size: int = 16, threads: int = 0) -> Predictions:
    from sampleiqa.runtime.contracts import PIXELS
    from sampleiqa.runtime.onnx_runtime import cpu_session

    session = cpu_session(onnx_path, threads)
    scores = np.full(len(dataset.samples), np.nan)
    errors: dict[str, str] = {}
    bar = Progress(len(dataset.samples), "evaluating")
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if pending:
            out = session.run(None, {PIXELS: np.stack([p for _, p in pending])})[0].reshape(-1)
            for (i, _), s in zip(pending, out):
                scores[i] = s
            bar.update(len(pending))
            pending.clear()

    for i, sample in enumerate(dataset.samples):
        try:
            pending.append((i, preprocess_file(sample.path).pixels))
        except (OSError, PreprocessError) as e:
            errors[str(sample.path)] = str(e)
            bar.update(failed=1)
        if len(pending) == batch_size:
            flush()
    flush()
    bar.close()
    return scores, errors


def predict_server(urls: list[str], dataset: LabelledSet, concurrency: int = 8, timeout: float = 60.0) -> Predictions:
    from sampleiqa.clients.client import ScoringClient

    scores = np.full(len(dataset.samples), np.nan)
    errors: dict[str, str] = {}
    bar = Progress(len(dataset.samples), "evaluating (server)")
    index = {str(s.path): i for i, s in enumerate(dataset.samples)}
    items = ((str(s.path), s.path.read_bytes()) for s in dataset.samples)
    with ScoringClient(urls, timeout_s=timeout) as client:
        for path, result in client.score_many(items, concurrency=concurrency):
            if result.status == "ok":
                scores[index[str(path)]] = result.score
                bar.update()
            else:
                errors[str(path)] = result.error
                bar.update(failed=1)
    bar.close()
    return scores, errors


def summarise(name: str, dataset: LabelledSet, scores: np.ndarray, errors: dict[str, str]) -> dict:
    ok = ~np.isnan(scores)
    scenes = [s.scene for s in dataset.samples]
    result = evaluate_scores(scores[ok], np.asarray(dataset.scores)[ok], [sc for sc, k in zip(scenes, ok) if k])
    result.update(model=name, dataset=dataset.name, failed=len(errors), errors=errors)
    return result


def report_markdown(results: list[dict], command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        "| model | images | failed | PLCC | PLCC (logistic) | SROCC | KRCC |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for key, label in (("overall", ""), ("scene_mean", " (scene mean)"), ("scene_median", " (scene median)")):
            if key in r and (key != "overall" or "scene_mean" not in r):
                m = r[key]
                lines.append(
                    f"| {r['model']}{label} | {r['n']} | {r['failed']} | {m['plcc']:.4f} | "
                    f"{m['plcc_logistic']:.4f} | {m['srocc']:.4f} | {m['krcc']:.4f} |"
                )
    return "\n".join(lines) + "\n"
