"""Where each stage's outputs live (relative to the repository root)."""

from pathlib import Path

TOKENS_DIR = Path("data/tokens")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")


def model_dir(seed: int) -> Path:
    """Directory of the trained model of ``seed``."""
    return MODELS_DIR / f"seed{seed}"
