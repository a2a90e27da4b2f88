"""What goes wrong between a model's name and a loaded model: a name that is no model, a model not on this
machine, a file of its folder that cannot be used. Each message says which, and what to do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from your_ai.errors import UserError


class ModelResolutionError(UserError):
    """A model name that cannot become a directory; the message says what to do."""


class ModelNotAvailableError(ModelResolutionError):
    """The model is valid but not on this machine (not in the local cache, or path missing)."""

    def __init__(self, message: str, hub_id: str | None = None):
        super().__init__(message)
        self.hub_id = hub_id

    @property
    def download_command(self) -> str | None:
        return f"hf download {self.hub_id}" if self.hub_id else None


class InvalidModelNameError(ModelResolutionError):
    """Neither a preset, nor an ``org/name`` hub id, nor an existing directory."""


class ModelFileError(ModelResolutionError):
    """A file of a model folder that cannot be used (config.json, weights, tokenizer); the message names it."""


@contextmanager
def refused_model_file(message: str) -> Iterator[None]:
    """Turn transformers refusing a model file into a ``ModelFileError``: ``message`` with its ``{reason}``.
    Refusals are ValueError, KeyError, huggingface_hub's strict config checks, and OSErrors of transformers'
    own, which have no errno (those of the operating system keep theirs and pass)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # huggingface_hub before strict dataclasses
        StrictDataclassError = ValueError  # noqa: N806
    try:
        yield
    except (ValueError, KeyError, OSError, StrictDataclassError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise ModelFileError(message.replace("{reason}", _first_sentence(error))) from error


def _first_sentence(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0].rstrip(" .:")
