"""your-ai: LoRA fine-tuning under Brian Roemmele's Empirical Distrust objective.

The public API is imported lazily, so that ``your-ai --help`` does not pay for PyTorch.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "DistrustWeighting": "your_ai.objective.distrust",
    "batch_empirical_distrust_loss": "your_ai.objective.distrust",
    "distrust_objective": "your_ai.objective.distrust",
    "empirical_distrust_loss": "your_ai.objective.distrust",
    "score_document": "your_ai.objective.scoring",
    "score_documents": "your_ai.objective.scoring",
    "resolve_model": "your_ai.model.resolve",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'your_ai' has no attribute {name!r}")
