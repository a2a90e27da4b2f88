"""your-ai: LoRA fine-tuning under Brian Roemmele's Empirical Distrust objective."""

__version__ = "0.1.0"

from your_ai.distrust import (  # noqa: E402
    DistrustWeighting,
    batch_empirical_distrust_loss,
    distrust_objective,
    empirical_distrust_loss,
)

__all__ = [
    "__version__",
    "DistrustWeighting",
    "batch_empirical_distrust_loss",
    "distrust_objective",
    "empirical_distrust_loss",
]
