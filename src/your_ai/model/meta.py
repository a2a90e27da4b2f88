"""Models built without memory (parameters on the meta device), and the decoder layers of a model."""

from __future__ import annotations


def decoder_layers(model) -> list:
    """The decoder layers of a Hugging Face model, in order, PEFT-wrapped or not, sharded or not: the modules
    of the blocks its model classes name as not to be split (``_no_split_modules``), subclasses included
    (FSDP2 turns a sharded layer's class into a subclass). Empty for a model that names none."""
    names = set()
    for inner in model.modules():
        names.update(getattr(inner, "_no_split_modules", None) or ())
    return [inner for inner in model.modules() if any(cls.__name__ in names for cls in type(inner).__mro__)]


def parameters_on_meta():
    """Parameters of modules built inside the block are put on the meta device (they take no memory);
    buffers (rotary frequencies and the like) are built as usual (accelerate's ``init_empty_weights``)."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)
