"""The MLX engine: ``your-ai train --engine mlx`` on Apple Silicon (and MLX's CPU build elsewhere).

It takes what to train from ``your_ai.train`` as it is (the arguments and their defaults, the run plan,
the records, tokenization and data order, the objective and its weights, the output directory's layout)
and runs it in MLX through mlx-lm:

* ``model``: a resolved model loaded into mlx-lm (or a random one of an ``Architecture``), its base
  quantized for QLoRA, LoRA on the last layers started as the torch engine starts it;
* ``adapters``: the adapter in PEFT's format, read and written, so either engine uses the other's;
* ``loss``: the per-sample cross-entropy and the distrust objective in MLX;
* ``memory``: MLX's own peak and the default budget;
* ``checkpoints``: checkpoints that resume exactly, in the torch engine's layout;
* ``loop``: ``train``, the run.

Importing this package imports MLX: import it only where the MLX engine was chosen
(``your_ai.hardware.pick_engine``).
"""
