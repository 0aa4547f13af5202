"""Where the checkout's own files are: one place for every stage (the package is installed
editable, so these resolve into the checkout)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"  # the committed CPU repository
SAMPLES = REPO_ROOT / "samples"
WEIGHTS = REPO_ROOT / "training" / "weights"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # real labelled photos, never copied in
RESULTS = REPO_ROOT / "perf" / "results"
