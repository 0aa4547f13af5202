"""How much of a prior model's score comes from the Swin, and how much from the pooled
statistics of the pretrained trunk.

    python -m sampleiqa.training.studies.probe_prior_share [CHECKPOINT] [--data kind=biq2021 root=... split=val]

The head is linear over [Swin features, standardised pooled statistics], so the score is the
sum of two parts. On the served crops (cached trunk outputs, view 0): each part's spread
(standardised units) and the SROCC / PLCC of each part alone (the score with the other part
removed), of their sum (the served score), and of the Swin's own auxiliary head.
"""

import sys

import numpy as np
import torch

from sampleiqa.training.checkpoint import load_scorer
from sampleiqa.training.data.cache import build_cache
from sampleiqa.training.data.datasets import create_dataset
from sampleiqa.training.data.features import build_features
from sampleiqa.training.metrics import evaluate_scores, headline

args = [a for a in sys.argv[1:] if "=" not in a and not a.startswith("--")]
spec = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a) or {
    "kind": "biq2021",
    "root": "../shared/data/biq2021",
    "split": "val",
}
model, _ = load_scorer(args[0] if args else "training/weights/biq2021_default.pt")
data = build_features(build_cache(create_dataset(spec)), model.trunk, views=3)
top = model.top.eval()
parts = {"Swin": [], "pooled statistics": [], "Swin-only auxiliary head": []}
with torch.no_grad():
    for start in range(0, len(data), 64):
        tokens = torch.from_numpy(data.tokens[start : start + 64, 0].astype(np.float32))
        swin, pooled = top.parts(tokens, torch.from_numpy(data.pooled[start : start + 64, 0]))
        parts["Swin"].append((swin @ top.swin_weight()[0]).numpy())
        parts["pooled statistics"].append(
            (pooled @ top.pooled_weight()[0]).numpy() if top.config.use_pooled else np.zeros(len(swin), np.float32)
        )
        parts["Swin-only auxiliary head"].append(top.swin_head(swin).view(-1).numpy())
parts = {k: np.concatenate(v) for k, v in parts.items()}
parts["served (sum)"] = parts["Swin"] + parts["pooled statistics"]
print(f"{len(data)} photos ({spec})")
for name, z in parts.items():
    h = (
        headline(evaluate_scores(z, data.scores, data.scenes))
        if z.std() > 0
        else {"srocc": float("nan"), "plcc": float("nan")}
    )
    print(f"| {name} | std {z.std():.3f} | SROCC {h['srocc']:.4f} | PLCC {h['plcc']:.4f} |")
