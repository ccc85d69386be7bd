"""Where each stage's outputs live (relative to the repository root)."""

from pathlib import Path

TOKENS_DIR = Path("data/tokens")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")


def model_dir(seed: int) -> Path:
    """Directory of the trained model of ``seed``."""
    return MODELS_DIR / f"seed{seed}"


# --- collect / correlate / baseline / universality (issue 4) ---
COLLECT_DIR = Path("data/collect")
CORRELATE_DIR = Path("data/correlate")
BASELINE_DIR = Path("data/baseline")
UNIVERSALITY_DIR = Path("data/universality")


def model_name(seed: int) -> str:
    """Name of the model of ``seed`` in every table and metric: ``seed{s}``."""
    return f"seed{seed}"


def collect_dir(seed: int, root: Path = COLLECT_DIR) -> Path:
    """collect's output directory for the model of ``seed``."""
    return root / model_name(seed)
