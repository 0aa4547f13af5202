"""matplotlib on the Agg backend (no display), optional: without it a run still writes its
tables. Imports nothing of sampleiqa, so perf/gpu_scorer_bench.py can use it from a plain
checkout."""

from __future__ import annotations

from pathlib import Path


def new_axes():
    """(figure, axes), or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt.subplots(figsize=(6, 4))


def save(fig, ax, path: Path, title: str, xlabel: str, ylabel: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
