"""Try server settings one at a time: build a repository variant, run the harness on it,
and collect the figures of every variant in perf/results/tuning.md.

    python -m sampleiqa.perf.tune [--variants a,b] [harness flags, e.g. --repeats 3]

Variants differ from the committed repository in one setting each (instance counts, ORT
threads and spinning, queue delays); the scorer weights are the committed ones.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sampleiqa.runtime.contracts import SCORER

from .harness import add_arguments, run

VARIANTS = {
    "base": {},
    "spin-off": {"ort_spinning": False},
    "ort1": {"ort_threads": 1},
    "pre1": {"preprocess_instances": 1},
    "delay10ms": {"scorer_queue_delay_us": 10000},
    "pre1-ort2-spin-off": {"preprocess_instances": 1, "ort_spinning": False},
    "scorer2-ort1": {"scorer_instances": 2, "ort_threads": 1},
}


def _settings(base, overrides: dict):
    from sampleiqa.build.triton_config import RepositorySettings

    return RepositorySettings(**{**base.__dict__, **overrides})


def main(argv=None) -> int:
    from sampleiqa.build.repository import build_repository
    from sampleiqa.build.triton_config import RepositorySettings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--base", default="", help="overrides every variant starts from, e.g. ort_spinning=0")
    args = p.parse_args(argv)
    base = RepositorySettings(
        **{
            k: type(getattr(RepositorySettings(), k))(int(v))
            for k, v in (kv.split("=") for kv in filter(None, args.base.split(",")))
        }
    )
    onnx = Path(args.repository) / SCORER / "1" / "model.onnx"
    rows = []
    prefix = args.name
    for name in args.variants.split(","):
        with tempfile.TemporaryDirectory(prefix=f"sampleiqa-{name}-") as scratch:
            build_repository(Path(scratch) / "repo", _settings(base, VARIANTS[name]), onnx_path=onnx, vendor=False)
            args.repository, args.onnx, args.name = str(Path(scratch) / "repo"), str(onnx), f"{prefix}-{name}"
            args.note = f"variant {name}: {VARIANTS[name] or 'as committed'} over {args.base or 'the defaults'}"
            if run(args) != 0:
                rows.append(f"| {name} | failed (see the log) | | | | | | | | |")
                continue
        rows.append(_row(Path(args.out_dir) / f"{args.name}.json", name))
    table = Path(args.out_dir) / f"{prefix}.md"
    table.write_text(_table(rows, args))
    print(table.read_text())
    return 0


def _row(raw: Path, name: str) -> str:
    import json
    import statistics

    runs = json.loads(raw.read_text())["runs"]

    def med(key: str) -> float:
        return statistics.median(r["figures"].get(key, float("nan")) for r in runs)

    return (
        f"| [{name}]({raw.with_suffix('.md').name}) | {VARIANTS[name] or 'as committed'} | "
        f"{med('ensemble_img_s'):.1f} | "
        f"{med('ensemble_over_in_process'):.2f} | {med('ensemble_over_slowest_step'):.2f} | "
        f"{med('ensemble_over_shared_core_bound'):.2f} | {med('scorer_mean_batch_ensemble_c4plus'):.2f} | "
        f"{med('preprocess_alone_img_s'):.0f} / {med('scorer_alone_img_s'):.0f} / "
        f"{med('in_process_pipeline_img_s'):.0f} | "
        f"{med('ensemble_core_ms_per_image'):.1f} | {med('in_process_cpu_over_ensemble_cpu'):.2f} |"
    )


def _table(rows: list[str], args) -> str:
    return (
        "\n".join(
            [
                "# Server settings tried (one change at a time)",
                "",
                "Each row is one harness run on a repository built with that change over "
                f"`{args.base or 'the defaults'}`"
                f" ({args.repeats} repeat(s), concurrency {args.concurrency}). Ratios are taken within each run.",
                "",
                "| variant | change | ensemble img/s | / in-process | / slowest step | / shared-core bound "
                "| scorer batch (c>=4) "
                "| pre / scorer / in-process img/s | ensemble server CPU ms/img | in-process CPU / ensemble CPU |",
                "|---|---|---|---|---|---|---|---|---|---|",
                *rows,
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
