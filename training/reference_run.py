"""A small fixed training run of both pipelines: does a change keep training's outputs?

    python -m sampleiqa.training.reference_run --out /tmp/ref/before
    # ... change the code ...
    python -m sampleiqa.training.reference_run --out /tmp/ref/after --compare /tmp/ref/before

Each pipeline trains its config of training/configs/reference/ (prior: the shipped lite0_swin;
pixel: a few-kFLOP Swin through stats, synthetic and mos stages) on the first 40 BIQ2021
`train` photos by name, then `evaluate` reports its last.pt on the first 16 `val` photos.
`--compare` checks every output against the other run's: bytes for reports, plots and
checkpoints; the training log and the checkpoints' history without the wall-clock `seconds`.
It exits 1 on a difference. Every run trains in the same folder (under --cache; configs and
reports name their paths) and is then copied to --out. Outputs are bitwise equal on one
machine and software stack (two runs of the same code are), not across CPUs or torch versions.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import json
import os
import shutil
import sys
from pathlib import Path

from sampleiqa.paths import REPO_ROOT, SHARED_DATA
from sampleiqa.runtime import environment

CONFIGS = REPO_ROOT / "training" / "configs" / "reference"
PHOTOS = {"train": 40, "val": 16}
WALL_CLOCK = "seconds"  # the one field that differs between two runs of the same code


def write_subsets(biq: Path, out: Path) -> dict[str, Path]:
    """out/<split>.csv: the first PHOTOS[split] photos of each BIQ2021 split, by name."""
    with open(biq / "labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["image"])
    paths = {}
    for split, count in PHOTOS.items():
        chosen = [r for r in rows if r["split"] == split][:count]
        paths[split] = out / f"{split}.csv"
        with open(paths[split], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "score"])
            w.writerows([str(biq / "images" / r["image"]), r["mos"]] for r in chosen)
    return paths


def run_pipeline(name: str, subsets: dict[str, Path], out: Path) -> None:
    from .commands import COMMANDS
    from .config import load_config
    from .pipelines import train

    data = {split: {"kind": "csv", "path": str(path)} for split, path in subsets.items()}
    cfg = load_config(CONFIGS / f"{name}.toml", {"data": data, "out_dir": str(out / name)})
    print(f"reference run: training {name} ({cfg.model}) into {out / name}", file=sys.stderr)
    train(cfg)
    evaluate = COMMANDS["evaluate"]
    parser = argparse.ArgumentParser(prog="sampleiqa evaluate")
    evaluate.add_arguments(parser)
    args = parser.parse_args(
        ["--checkpoint", str(out / name / "last.pt"), "--data", "kind=csv", f"path={subsets['val']}"]
        + ["--report", str(out / name / "eval_report.md")]
    )
    if evaluate.run(args) != 0:
        raise SystemExit(f"reference run: evaluate {name} failed")


def _without_wall_clock(obj):
    if isinstance(obj, dict):
        return {k: _without_wall_clock(v) for k, v in obj.items() if k != WALL_CLOCK}
    if isinstance(obj, list):
        return [_without_wall_clock(v) for v in obj]
    return obj


def _equal(x, y) -> bool:
    import torch

    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and list(x) == list(y) and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(_equal(i, j) for i, j in zip(x, y))
    return x == y


def same_output(a: Path, b: Path) -> str:
    """'bytes', 'all but seconds' or 'DIFFERENT' for one output file of two runs."""
    if filecmp.cmp(a, b, shallow=False):
        return "bytes"
    if a.suffix == ".jsonl":
        lines = [[_without_wall_clock(json.loads(s)) for s in p.read_text().splitlines()] for p in (a, b)]
        same = lines[0] == lines[1]
    elif a.suffix == ".pt":
        import torch

        same = _equal(*(_without_wall_clock(torch.load(p, map_location="cpu", weights_only=False)) for p in (a, b)))
    else:
        same = False
    return "all but seconds" if same else "DIFFERENT"


def compare(run: Path, reference: Path) -> bool:
    outputs = sorted(
        p.relative_to(reference) for name in ("prior", "pixel") for p in (reference / name).rglob("*") if p.is_file()
    )
    ok = True
    for rel in outputs:
        verdict = same_output(reference / rel, run / rel) if (run / rel).is_file() else "MISSING"
        ok &= verdict in ("bytes", "all but seconds")
        print(f"{verdict:16s} {rel}")
    print("reference run: every output matches" if ok else "reference run: outputs differ")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="where this run's outputs are copied")
    p.add_argument("--compare", type=Path, help="an earlier run's --out folder to compare with")
    p.add_argument("--data", type=Path, default=Path(os.environ.get(environment.DATA, SHARED_DATA)))
    p.add_argument("--cache", default="/tmp/sampleiqa-reference-cache", help="crop and trunk-output caches")
    args = p.parse_args(argv)
    os.environ.setdefault(environment.CACHE, args.cache)
    work = Path(args.cache) / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subsets = write_subsets(args.data / "biq2021", work)
    for name in ("prior", "pixel"):
        run_pipeline(name, subsets, work)
    shutil.copytree(work, args.out, dirs_exist_ok=True)
    return 0 if args.compare is None or compare(args.out, args.compare) else 1


if __name__ == "__main__":
    raise SystemExit(main())
