"""``your-ai export``: merge a LoRA adapter into its base model and save a standalone model, as a Hugging Face
folder (safetensors, config, tokenizer) or as one GGUF file (``eval.gguf_export``)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from your_ai.eval.inference import InferenceError, base_model_of, load_for_inference
from your_ai.files import (
    check_writable,
    give_default_permissions,
    interrupted_by_signals,
    remove_leftovers,
    staging_directory,
    temporary_sibling,
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
    a failure, or SIGINT or SIGTERM (``files.Interrupted``), leaves nothing half-written; the folder
    and its files get the permissions the user's umask gives. An existing non-empty ``output`` is
    replaced only with ``force``. An ``output`` that cannot be written is refused before the model is
    loaded (``OutputError``).
    """
    output_path, checkpoint_path = _paths(checkpoint, output, model)
    if output_path.exists() and not output_path.is_dir():
        raise InferenceError(f"output {str(output_path)!r} exists and is not a directory; give a folder's path "
                             "(--format gguf writes one file)")
    if output_path.is_dir() and any(output_path.iterdir()) and not force:
        raise InferenceError(f"output {str(output_path)!r} exists and is not empty; pass --force to replace it")
    check_writable(output_path.parent, directory=True, shown_as=str(output_path))  # the model is staged there
    remove_leftovers(output_path)  # of an export that was killed
    merged, tokenizer = _merged(checkpoint_path, model, device, trust_remote_code)
    with interrupted_by_signals(), writing(output_path):  # SIGINT or SIGTERM: the staging folder is removed
        staging = staging_directory(output_path)
        try:
            merged.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
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


def export_gguf(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    quantization: str,
    device: str | None = None,
    *,
    model: str | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Merge the LoRA adapter in ``checkpoint`` into its base model and write the GGUF file ``output``
    (``quantization``: one of ``gguf_export.GGUF_QUANTIZATIONS``).

    The file is written beside ``output`` under a temporary name and renamed into place, so a failure, or
    SIGINT or SIGTERM (``files.Interrupted``), leaves no half file; an existing ``output`` is replaced only
    with ``force``. A family GGUF export does not support fails before the weights are merged
    (``GgufExportError``)."""
    from your_ai.eval.gguf_export import (
        GGUF_QUANTIZATIONS,
        GgufExportError,
        gguf_architecture,
        write_gguf,
    )
    from your_ai.model.architecture import read_config_values
    from your_ai.model.resolve import resolve_model

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if quantization not in GGUF_QUANTIZATIONS:
        raise GgufExportError(f"--quantize {quantization!r} is not one of {', '.join(GGUF_QUANTIZATIONS)}")
    output_path, checkpoint_path = _paths(checkpoint, output, model)
    if output_path.is_dir():
        raise InferenceError(f"output {str(output_path)!r} is a directory; give the GGUF file's path "
                             f"(for example {output_path / 'model.gguf'})")
    if output_path.exists() and not force:
        raise InferenceError(f"output {str(output_path)!r} exists; pass --force to replace it")
    check_writable(output_path, shown_as=str(output_path))
    remove_leftovers(output_path)  # of an export that was killed
    base = model or base_model_of(checkpoint_path)
    gguf_architecture(read_config_values(resolve_model(base).path).get("model_type", ""))  # refuse early
    merged, tokenizer = _merged(checkpoint_path, model, device, trust_remote_code)
    with (interrupted_by_signals(), writing(output_path),
          tempfile.TemporaryDirectory(prefix=".your-ai-tokenizer.") as folder):
        tokenizer.save_pretrained(folder)
        handle = temporary_sibling(output_path)
        handle.close()
        try:
            write_gguf(merged, tokenizer, Path(folder), Path(handle.name), quantization, _model_name(base), say)
            os.replace(handle.name, output_path)
        finally:
            if os.path.exists(handle.name):
                os.unlink(handle.name)
    return output_path


def _paths(checkpoint, output, model: str | None = None) -> tuple[Path, Path]:
    """``output`` and ``checkpoint`` as absolute paths; ``InferenceError`` when ``output`` and the checkpoint, or
    ``output`` and the base model's own folder or file (``model``, else the checkpoint's base), lie one inside the
    other: replacing ``output`` would destroy what the export reads."""
    output_path = Path(output).expanduser().resolve()
    checkpoint_path = Path(checkpoint).expanduser().resolve()
    inputs = {"the checkpoint": checkpoint_path}
    base = model or _recorded_base(checkpoint_path)
    if base and Path(base).expanduser().exists():  # a model directory or GGUF file, not a preset or hub id
        inputs["the base model"] = Path(base).expanduser().resolve()
    for role, path in inputs.items():
        if output_path == path or path in output_path.parents or output_path in path.parents:
            raise InferenceError(f"output {str(output_path)!r} overlaps {role} {str(path)!r}; "
                                 "choose an --output outside it")
    return output_path, checkpoint_path


def _recorded_base(checkpoint_path: Path) -> str | None:
    """The checkpoint's recorded base model, or None when its folder cannot tell (loading it reports why)."""
    try:
        return base_model_of(checkpoint_path)
    except InferenceError:
        return None


def _merged(checkpoint_path: Path, model: str | None, device: str | None, trust_remote_code: bool):
    """The base model with the adapter merged into its weights, and the tokenizer."""
    im = load_for_inference(model, checkpoint_path, device, trust_remote_code)
    return im.model.merge_and_unload(), im.tokenizer


def _model_name(base: str) -> str:
    """A model's name for ``general.name``: a hub id's or folder's last part (a GGUF file's stem)."""
    name = Path(base.rstrip("/")).name
    return name[:-5] if name.endswith(".gguf") else name
