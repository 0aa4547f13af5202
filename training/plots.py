"""Training curves as PNG, for the pixel loop and the prior loop alike."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and validation correlations per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = range(1, len(history) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(x, [h["loss"] for h in history], "k.-", label="loss")
    ax1.set_xlabel("epoch (all stages)")
    ax1.set_yscale("log")
    ax1.legend()
    for key in ("val_srocc", "val_plcc"):
        if any(key in h for h in history):
            ax2.plot(x, [h.get(key, float("nan")) for h in history], ".-", label=key)
    ax2.set_xlabel("epoch (all stages)")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
