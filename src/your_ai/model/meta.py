"""Models built without memory: parameters on the meta device, and the decoder layers of a model."""

from __future__ import annotations

import torch


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers inside ``module``: the blocks its Hugging Face model names as not to be split."""
    names = set()
    for inner in module.modules():
        names.update(getattr(inner, "_no_split_modules", None) or ())
    return [inner for inner in module.modules() if type(inner).__name__ in names]


def parameters_on_meta():
    """Parameters of modules built inside the block are put on the meta device (they take no memory);
    buffers (rotary frequencies and the like) are built as usual (accelerate's ``init_empty_weights``)."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)
