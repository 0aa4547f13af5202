"""Labelled image sets: BIQ2021, PIQ23 (official label layout) and a generic CSV.

A dataset is a list of `Sample(path, score, scene)`. Images that are missing are
collected in `LabelledSet.missing` and reported by the caller; they are never dropped
silently. Which dataset to load is data (a dict from a TOML config), see `create_dataset`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath


@dataclass(frozen=True)
class Sample:
    path: Path
    score: float
    scene: str | None = None


@dataclass
class LabelledSet:
    name: str
    samples: list[Sample]
    missing: list[Path] = field(default_factory=list)

    @property
    def scores(self) -> list[float]:
        return [s.score for s in self.samples]

    @property
    def has_scenes(self) -> bool:
        return any(s.scene is not None for s in self.samples)

    def describe(self) -> str:
        text = f"{self.name}: {len(self.samples)} images"
        if self.has_scenes:
            text += f" in {len({s.scene for s in self.samples})} scenes"
        if self.missing:
            shown = ", ".join(str(p) for p in self.missing[:3])
            text += f"; {len(self.missing)} MISSING (e.g. {shown})"
        return text


def _split_present(name: str, rows: list[tuple[Path, float, str | None]]) -> LabelledSet:
    present = [Sample(p, s, scene) for p, s, scene in rows if p.is_file()]
    missing = [p for p, _, _ in rows if not p.is_file()]
    return LabelledSet(name, present, missing)


def load_biq2021(root: str | Path, split: str | None = None) -> LabelledSet:
    """`labels.csv` (`image,mos,split`) with the photos in `images/`."""
    root = Path(root)
    rows = []
    with open(root / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            if split is None or r["split"] == split:
                rows.append((root / "images" / r["image"], float(r["mos"]), None))
    return _split_present(f"biq2021[{split or 'all'}]", rows)


PIQ23_SPLITS = {"scene": "Scene Split", "device": "Device Split"}
PIQ23_ATTRIBUTES = ("Overall", "Details", "Exposure")


def load_piq23(
    labels_root: str | Path,
    image_root: str | Path,
    attribute: str = "Overall",
    split: str = "device",
    part: str = "train",
) -> LabelledSet:
    """PIQ23 from its official files: `Test split/<Kind> Split/<Kind>Split_<Part>_Scores_<attr>.csv`.

    `IMAGE PATH` is a Windows path relative to the dataset root (`Overall\\66_Indoor_Scene_0.jpg`);
    the images are looked up under `image_root` with that relative path. JOD is relative
    within a scene, so every sample carries its scene for per-scene evaluation.
    """
    if attribute not in PIQ23_ATTRIBUTES:
        raise ValueError(f"attribute must be one of {PIQ23_ATTRIBUTES}, not {attribute!r}")
    if split not in PIQ23_SPLITS or part not in ("train", "test"):
        raise ValueError("split must be 'scene' or 'device' and part 'train' or 'test'")
    kind = PIQ23_SPLITS[split]
    table = Path(labels_root) / "Test split" / kind / f"{kind.replace(' ', '')}_{part.title()}_Scores_{attribute}.csv"
    rows = []
    with open(table, newline="", encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            rel = PureWindowsPath(r["IMAGE PATH"]).parts
            rows.append((Path(image_root).joinpath(*rel), float(r["JOD"]), r["SCENE"]))
    return _split_present(f"piq23[{attribute},{split},{part}]", rows)


def load_csv(path: str | Path, root: str | Path | None = None) -> LabelledSet:
    """A generic `path,score[,scene]` CSV; relative paths are taken from `root` (default:
    the CSV's folder)."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("path", "score") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} needs the columns path and score (scene optional); it has "
                f"{', '.join(reader.fieldnames or []) or 'none'}: missing {', '.join(missing)}"
            )
        for line, r in enumerate(reader, start=2):
            try:
                score = float(r["score"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: score {r['score']!r} is not a number") from None
            p = Path(r["path"])
            rows.append((p if p.is_absolute() else base / p, score, r.get("scene") or None))
    return _split_present(f"csv[{path.name}]", rows)


_LOADERS = {"biq2021": load_biq2021, "piq23": load_piq23, "csv": load_csv}


def create_dataset(spec: dict) -> LabelledSet:
    """A dataset from a config table, e.g. `{kind = "biq2021", root = "...", split = "val"}`."""
    spec = dict(spec)
    try:
        loader = _LOADERS[spec.pop("kind")]
    except KeyError as e:
        raise ValueError(f"dataset kind must be one of {sorted(_LOADERS)}") from e
    return loader(**spec)
