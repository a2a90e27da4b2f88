"""Inference on the MLX engine: a model (and a PEFT adapter) loaded through ``your_ai.mlx_engine``,
run behind ``your_ai.eval.inference``'s functions.

``MlxRunner`` is what an ``InferenceModel`` on the MLX engine holds: it gives the logits of a batch
(as a torch tensor in fp32, so that cross-entropy and log-likelihoods are computed by the same code as
on the torch engine), decodes prompts with mlx-lm's ``generate_step`` and switches the adapter off for
``--compare``. Importing this module imports MLX.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
from mlx.utils import tree_unflatten
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler

from your_ai.files import read_json_object
from your_ai.mlx_engine.adapters import load_adapter
from your_ai.mlx_engine.model import MlxModel, load_mlx_model
from your_ai.model.resolve import ResolvedModel


class MlxRunner:
    """An MLX model, with its adapter if one is loaded, in the form the inference functions use."""

    def __init__(self, loaded: MlxModel, generation_config: SimpleNamespace):
        self.loaded = loaded
        self.generation_config = generation_config  # the model's end tokens, as on the torch engine

    def logits(self, input_ids, attention_mask=None):
        """The logits of a right-padded batch of token ids (a torch tensor), fp32, as a torch tensor: causal
        attention keeps padding on the right out of every real position's logits."""
        import torch

        out = self.loaded.model(mx.array(input_ids.cpu().numpy()))
        return torch.from_numpy(np.array(out.astype(mx.float32)))

    def seed(self, seed: int) -> None:
        mx.random.seed(seed)

    def decode(self, prompts: list[list[int]], max_tokens: int, temperature: float, ends: set[int]) -> list[list[int]]:
        """The new tokens after each prompt, one prompt at a time; an answer ends before its end token."""
        sampler = make_sampler(temp=temperature)
        answers = []
        for prompt in prompts:
            answer = []
            for token, _ in generate_step(mx.array(prompt), self.loaded.model, max_tokens=max_tokens,
                                          sampler=sampler):
                token = int(token)
                if token in ends:
                    break
                answer.append(token)
            answers.append(answer)
        return answers

    @contextmanager
    def disable_adapter(self):
        """The base model alone while inside: every adapted projection's base layer back in its place (a
        LoRA or DoRA layer's own), the adapted layers put back after."""
        adapted = self.loaded.adapted_modules()
        self.loaded.model.update_modules(tree_unflatten([(path, module.linear) for path, module in adapted]))
        try:
            yield
        finally:
            self.loaded.model.update_modules(tree_unflatten(adapted))


def load_mlx_runner(resolved: ResolvedModel, checkpoint: Path | None, trust_remote_code: bool = False) -> MlxRunner:
    """``resolved`` loaded in MLX in the engine's dtype, with the PEFT adapter in ``checkpoint`` if given
    (``AdapterFormatError`` naming the file when it does not fit)."""
    loaded = load_mlx_model(resolved, trust_remote_code=trust_remote_code)
    if checkpoint is not None:
        load_adapter(loaded, checkpoint)
    return MlxRunner(loaded, _generation_config(resolved.path))


def _generation_config(model_dir: Path) -> SimpleNamespace:
    """The model's end tokens as transformers reads them: ``generation_config.json``, else ``config.json``."""
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            ends = read_json_object(path).get("eos_token_id")
            if ends is not None:
                return SimpleNamespace(eos_token_id=ends)
    return SimpleNamespace(eos_token_id=None)
