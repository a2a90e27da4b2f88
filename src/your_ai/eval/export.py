"""``your-ai export``: merge a LoRA adapter into its base model and save a standalone model."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from your_ai.eval.inference import InferenceError, load_for_inference
from your_ai.files import (
    check_writable,
    give_default_permissions,
    staging_directory,
    writing,
)


def merge_adapter(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    device: str | None = None,
    *,
    model: str | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """Merge the LoRA adapter in ``checkpoint`` into its base model and save a standalone
    model (safetensors + tokenizer) in ``output``.

    The model is written to a temporary folder beside ``output`` and renamed into place, so
    a failure leaves nothing half-written; the folder and its files get the permissions the
    user's umask gives. An existing non-empty ``output`` is replaced only with ``force``. An
    ``output`` that cannot be written is refused before the model is loaded (``OutputError``).
    """
    output_path = Path(output).expanduser().resolve()
    checkpoint_path = Path(checkpoint).expanduser().resolve()
    if output_path.exists() and not output_path.is_dir():
        raise InferenceError(f"output {str(output_path)!r} exists and is not a directory")
    if output_path == checkpoint_path or checkpoint_path in output_path.parents or output_path in checkpoint_path.parents:
        raise InferenceError(f"output {str(output_path)!r} overlaps the checkpoint {str(checkpoint_path)!r}")
    if output_path.is_dir() and any(output_path.iterdir()) and not force:
        raise InferenceError(f"output {str(output_path)!r} exists and is not empty; pass --force to replace it")
    check_writable(output_path.parent, directory=True, shown_as=str(output_path))  # the model is staged there
    im = load_for_inference(model, checkpoint_path, device, trust_remote_code)
    merged = im.model.merge_and_unload()
    with writing(output_path):
        staging = staging_directory(output_path)
        try:
            merged.save_pretrained(staging, safe_serialization=True)
            im.tokenizer.save_pretrained(staging)
            give_default_permissions(staging)
            if output_path.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{output_path.name}.old.", dir=output_path.parent))
                os.replace(output_path, retired / "previous")
                os.replace(staging, output_path)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, output_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return output_path
