"""Use a model, with or without a LoRA adapter: load it, and generate.

``load_for_inference`` is the one way a base model and an adapter folder (PEFT format:
``adapter_config.json`` + ``adapter_model.safetensors``) become a model ready to use, on the torch
engine or on the MLX engine (``engine``; the model is then an ``eval.mlx_inference.MlxRunner`` and the
device "mlx").
An adapter folder names its base model in ``adapter_config.json``
(``base_model_name_or_path``: a preset, a hub id or a directory), so ``--checkpoint``
alone is enough; ``--model`` overrides it.

Generation: ``prompt_token_ids`` decides how a prompt is sent (the tokenizer's chat template
when it has one, else plain text); ``generate_batch`` decodes left-padded batches with one
key/value cache and drops each answer from its batch at its end token.

Scoring text under a model is in ``your_ai.eval.likelihood``; merging an adapter into its base
model in ``your_ai.eval.export``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from your_ai.errors import UserError
from your_ai.files import read_json_object
from your_ai.hardware import pick_device, pick_engine, training_dtype
from your_ai.model.errors import InvalidModelNameError, ModelNotAvailableError
from your_ai.model.load import load_model, load_tokenizer
from your_ai.model.resolve import ResolvedModel, model_or_default, resolve_model
from your_ai.step.memory import MLX_DEVICE
from your_ai.train.outputs import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE

PICKLED_ADAPTER_WEIGHTS = "adapter_model.bin"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")



class InferenceError(UserError):
    """A checkpoint, model or request that cannot be used; the message says why and what to do."""


@dataclass
class InferenceModel:
    """A model in eval mode on its device; ``model`` is a ``PeftModel`` when a checkpoint is loaded, an
    ``MlxRunner`` on the MLX engine (``device`` "mlx")."""

    model: Any
    tokenizer: Any
    base_name: str  # the base model as named (preset, hub id or path)
    checkpoint: Path | None
    device: str

    @property
    def has_adapter(self) -> bool:
        return self.checkpoint is not None

    @property
    def label(self) -> str:
        return f"{self.base_name} + {self.checkpoint}" if self.checkpoint else self.base_name

    @property
    def on_mlx(self) -> bool:
        return self.device == MLX_DEVICE

    def logits(self, input_ids, attention_mask):
        """The logits of a batch (right-padded token ids and their mask, torch tensors) on either engine."""
        if self.on_mlx:
            return self.model.logits(input_ids, attention_mask)
        return self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                          use_cache=False).logits


# ---------------------------------------------------------------------------- loading

def read_adapter_config(checkpoint: str | os.PathLike) -> dict:
    """The adapter folder's ``adapter_config.json``; ``InferenceError`` naming the folder and file otherwise."""
    folder = Path(checkpoint).expanduser()
    if not folder.exists():
        raise InferenceError(f"checkpoint {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise InferenceError(f"checkpoint {str(folder)!r} is not a directory (expected a LoRA adapter folder)")
    config_path = folder / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        raise InferenceError(
            f"checkpoint {str(folder)!r} is not a LoRA adapter folder: it has no {ADAPTER_CONFIG_FILE}"
        )
    if not (folder / ADAPTER_WEIGHTS_FILE).is_file():
        if (folder / PICKLED_ADAPTER_WEIGHTS).is_file():
            raise InferenceError(
                f"checkpoint {str(folder)!r} holds only {PICKLED_ADAPTER_WEIGHTS} (a pickle, which is never "
                f"loaded); convert it to {ADAPTER_WEIGHTS_FILE}"
            )
        raise InferenceError(f"checkpoint {str(folder)!r} is not a LoRA adapter folder: it has no {ADAPTER_WEIGHTS_FILE}")
    try:
        return read_json_object(config_path)
    except ValueError as error:
        raise InferenceError(f"{config_path}: {error}") from None


def check_adapter_weights(folder: Path) -> None:
    """The folder's ``adapter_model.safetensors`` opens: its header reads and covers the file (a truncated or
    damaged file does not). ``InferenceError`` naming the file otherwise, on either engine."""
    from safetensors import safe_open

    path = Path(folder) / ADAPTER_WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except Exception as error:  # safetensors raises its own error type, and OSError
        raise InferenceError(f"{path}: cannot be read ({_first_line(error)}): the file is damaged or "
                             f"incomplete; copy or train the adapter again") from None


def _first_line(error: Exception) -> str:
    """An error's first line of text; with the line after it when it only introduces a list (PyTorch's
    ``Error(s) in loading state_dict for ...:``)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def base_model_of(checkpoint: str | os.PathLike) -> str:
    """The base model an adapter folder was trained on (``base_model_name_or_path``)."""
    config = read_adapter_config(checkpoint)
    name = config.get("base_model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        raise InferenceError(
            f"{Path(checkpoint) / ADAPTER_CONFIG_FILE} does not name its base model (base_model_name_or_path); "
            f"pass it with --model"
        )
    return name


def load_for_inference(
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    engine: str | None = None,
) -> InferenceModel:
    """Load ``model`` (default: the checkpoint's base model, else ``models.DEFAULT_MODEL``) and, if given, the
    LoRA adapter in ``checkpoint``; in the training dtype (``hardware.training_dtype``); eval mode. On the MLX
    engine (``engine``: ``hardware.pick_engine``) through ``eval.mlx_inference``, ``device`` unused.

    Raises ``InferenceError`` for a bad checkpoint, ``ModelResolutionError`` (its subclass
    ``ModelNotAvailableError`` says how to download) for a base model that cannot be found,
    ``ValueError`` for an unusable ``device`` or ``engine``.
    """
    checkpoint_path = Path(checkpoint).expanduser().resolve() if checkpoint is not None else None
    if checkpoint_path is not None:
        read_adapter_config(checkpoint_path)  # fail on a bad folder before loading anything
        check_adapter_weights(checkpoint_path)
        base_name = model or base_model_of(checkpoint_path)
    else:
        base_name = model_or_default(model)
    resolved = _resolve_base(base_name, checkpoint_path if checkpoint_path is not None and not model else None)
    if pick_engine(engine) == "mlx":
        return _load_on_mlx(resolved, base_name, checkpoint_path, device, trust_remote_code)
    device = pick_device(device)
    dtype = training_dtype(device)
    network = load_model(resolved, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if checkpoint_path is not None:
        from peft import (
            PeftModel,  # here: checking a checkpoint folder does not wait for peft to import
        )

        try:
            with warnings.catch_warnings():  # PEFT asks transformers a deprecated question on load
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                network = PeftModel.from_pretrained(network, str(checkpoint_path), is_trainable=False)
        except (KeyError, TypeError) as error:  # an unknown peft_type, a value of the wrong type
            raise InferenceError(
                f"{checkpoint_path / ADAPTER_CONFIG_FILE}: a value PEFT cannot use ({_first_line(error)}); "
                f"restore the file (copy or train the adapter again)"
            ) from None
        except (RuntimeError, ValueError) as error:  # weights of other shapes, target modules the base lacks
            raise InferenceError(
                f"the adapter in {checkpoint_path} does not fit the base model {base_name!r}: "
                f"{_first_line(error).rstrip('.')}; pass --model with the base model it was trained on"
            ) from None
        network.to(device)
    tokenizer = load_tokenizer(_tokenizer_source(resolved, checkpoint_path), trust_remote_code=trust_remote_code)
    network.eval()
    return InferenceModel(network, tokenizer, base_name, checkpoint_path, device)


def _resolve_base(base_name: str, recorded_in: Path | None) -> ResolvedModel:
    """``resolve_model(base_name)``; when the name comes from the adapter folder ``recorded_in`` and no such model is
    found (it has moved, say), the message says where the name was read and to pass ``--model``."""
    try:
        return resolve_model(base_name)
    except (ModelNotAvailableError, InvalidModelNameError) as error:
        if recorded_in is None:
            raise
        error.args = (f"{error} (the base model {recorded_in / ADAPTER_CONFIG_FILE} names); if it is elsewhere now, "
                      f"pass --model with its place",)
        raise


def _tokenizer_source(resolved: ResolvedModel, checkpoint: Path | None) -> ResolvedModel:
    """Where the tokenizer is read: the adapter folder when it holds one, else the base model."""
    if checkpoint is not None and any((checkpoint / name).is_file() for name in TOKENIZER_FILES):
        return dataclasses.replace(resolved, path=checkpoint)
    return resolved


def _load_on_mlx(resolved: ResolvedModel, base_name: str, checkpoint: Path | None, device: str | None,
                 trust_remote_code: bool) -> InferenceModel:
    if device not in (None, MLX_DEVICE):
        raise ValueError(f"--device {device} is a device of the torch engine; the MLX engine runs on Metal (the CPU "
                         f"where there is no Metal): leave out --device or use --engine torch")
    from your_ai.eval.mlx_inference import load_mlx_runner
    from your_ai.mlx_engine.adapters import AdapterFormatError

    try:
        runner = load_mlx_runner(resolved, checkpoint, trust_remote_code)
    except AdapterFormatError as error:
        raise InferenceError(f"the adapter in {checkpoint} does not fit the base model {base_name!r}: {error}") from None
    tokenizer = load_tokenizer(_tokenizer_source(resolved, checkpoint), trust_remote_code=trust_remote_code)
    return InferenceModel(runner, tokenizer, base_name, checkpoint, MLX_DEVICE)


# ---------------------------------------------------------------------------- generation

def uses_chat_template(tokenizer, chat: bool | None = None) -> bool:
    """Whether a prompt goes through the tokenizer's chat template (as one user turn) or is sent as
    plain text: ``chat`` None, the default, uses the template when the tokenizer has one; True
    requires it (``InferenceError`` when there is none); False sends plain text (``--raw``)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise InferenceError("the model's tokenizer has no chat template; leave out --chat")
    return has_template if chat is None else bool(chat)


def prompt_token_ids(tokenizer, prompt: str, chat: bool | None = None) -> list[int]:
    """The tokens a prompt is sent as: the one place that decides how a prompt is formatted
    (``uses_chat_template``); never empty (the start token stands in for an empty prompt)."""
    if uses_chat_template(tokenizer, chat):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    else:
        ids = list(tokenizer(prompt).input_ids)
    return ids or [start_token(tokenizer)]


def empty_answer_hint(tokenizer, chat: bool | None, temperature: float) -> str:
    """One line for an answer that came out empty (the model ended at once), saying what to try."""
    tries = []
    if not uses_chat_template(tokenizer, chat) and getattr(tokenizer, "chat_template", None):
        tries.append("without --raw")
    tries.append("a higher --temperature" if temperature > 0 else "--temperature 0.7")
    return f"(empty answer: the model ended at once; try {' / '.join(tries)})"


def start_token(tokenizer) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise InferenceError("the tokenizer has neither a beginning- nor an end-of-sequence token to start from")
    return token


def generate(
    im: InferenceModel,
    prompt: str,
    max_tokens: int = 50,
    temperature: float = 0.7,
    seed: int | None = None,
    chat: bool | None = None,
) -> str:
    """The text the model writes after ``prompt`` (at most ``max_tokens`` tokens).

    ``temperature`` 0 decodes greedily; otherwise tokens are sampled from the whole
    distribution (``seed`` makes it repeatable). The prompt is formatted by
    ``prompt_token_ids`` (``chat``: see ``uses_chat_template``; by default the chat template
    when the tokenizer has one).
    """
    return generate_batch(im, [prompt], max_tokens, temperature, seed, chat, batch_size=1)[0]


def _check_decoding(max_tokens: int, temperature: float) -> None:
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be at least 1")
    if math.isnan(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0")


def _pad_token(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _end_tokens(im: InferenceModel) -> set[int]:
    """The tokens that end an answer: the model's generation config's, else the tokenizer's end token."""
    config = getattr(im.model, "generation_config", None)
    ends = getattr(config, "eos_token_id", None) if config is not None else None
    if ends is None:
        ends = im.tokenizer.eos_token_id
    if ends is None:
        return set()
    return {int(token) for token in ([ends] if isinstance(ends, int) else ends)}


def generate_batch(
    im: InferenceModel,
    prompts: Sequence[str],
    max_tokens: int = 50,
    temperature: float = 0.7,
    seed: int | None = None,
    chat: bool | None = None,
    batch_size: int = 8,
    advance: Callable[[int], None] | None = None,
) -> list[str]:
    """``generate`` for many prompts, ``batch_size`` at a time (left-padded batches of similar
    lengths); the texts come back in the order of ``prompts``; ``advance(n)`` is called as each
    batch of ``n`` prompts is done.

    Greedy outputs equal ``generate``'s up to floating-point rounding: in fp32 they match; in
    bf16 (CUDA) a padded batch rounds differently, which can flip a near-tie token and change
    the rest of a long answer. Sampling draws from one random stream (``seed``) for the whole
    call, so sampled texts differ from one-by-one calls.
    """
    _check_decoding(max_tokens, temperature)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    encoded = [prompt_token_ids(im.tokenizer, prompt, chat) for prompt in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    texts: list[str] = [""] * len(encoded)
    if seed is not None and im.on_mlx:
        im.model.seed(seed)
    elif seed is not None:
        torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        answers = _decode(im, [encoded[i] for i in chunk], max_tokens, temperature)
        for index, answer in zip(chunk, answers):
            texts[index] = im.tokenizer.decode(answer, skip_special_tokens=True)
        if advance:
            advance(len(chunk))
    return texts


def _cache_options(model, cache) -> dict[str, Any]:
    """The forward arguments that pass the key/value ``cache`` (``cache``, or the older
    ``past_key_values``) and, where the model takes it, ask for the last position's logits alone."""
    network = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(network.forward).parameters
    options: dict[str, Any] = {"cache" if "cache" in parameters else "past_key_values": cache, "use_cache": True}
    if "logits_to_keep" in parameters:
        options["logits_to_keep"] = 1
    return options


def _decode(im: InferenceModel, prompts: list[list[int]], max_tokens: int, temperature: float) -> list[list[int]]:
    """The new tokens after each of ``prompts`` (one left-padded batch, one key/value cache).

    A row leaves the batch as soon as it writes an end token, so a batch costs the sum of its
    answers' lengths rather than its longest answer times its size. An answer ends before its
    end token; an end token is never part of it.
    """
    ends = _end_tokens(im)
    if im.on_mlx:
        return im.model.decode(prompts, max_tokens, temperature, ends)
    from transformers import (
        DynamicCache,  # here: transformers loads with a model, not with this module
    )

    device = im.device
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[_pad_token(im.tokenizer)] * (width - len(ids)) + ids for ids in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = list(range(len(prompts)))  # the prompts still writing, in the batch's row order
    answers: list[list[int]] = [[] for _ in prompts]
    cache = DynamicCache()
    options = _cache_options(im.model, cache)
    with torch.inference_mode():
        for _ in range(max_tokens):
            logits = im.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                              **options).logits[:, -1, :]
            if temperature > 0:
                probabilities = torch.softmax(logits.float() / temperature, dim=-1)
                tokens = torch.multinomial(probabilities, 1).squeeze(1).tolist()
            else:
                tokens = logits.argmax(dim=-1).tolist()
            keep = []
            for slot, token in enumerate(tokens):
                if token not in ends:
                    answers[rows[slot]].append(token)
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                rows = [rows[slot] for slot in keep]
                tokens = [tokens[slot] for slot in keep]
            input_ids = torch.tensor(tokens, device=device).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            positions = positions[:, -1:] + 1
    return answers


@dataclass
class Comparison:
    base: str
    fine_tuned: str
    seed: int | None


def compare(
    im: InferenceModel,
    prompt: str,
    max_tokens: int = 50,
    temperature: float = 0.7,
    seed: int | None = None,
    chat: bool | None = None,
) -> Comparison:
    """Generate with the adapter switched off and on, from the same seed."""
    if not im.has_adapter:
        raise InferenceError("comparing base and fine-tuned output needs a checkpoint (--checkpoint DIR)")
    if seed is None and temperature > 0:
        seed = random.SystemRandom().randrange(2**31)
    with im.model.disable_adapter():
        base = generate(im, prompt, max_tokens, temperature, seed, chat)
    tuned = generate(im, prompt, max_tokens, temperature, seed, chat)
    return Comparison(base=base, fine_tuned=tuned, seed=seed)
