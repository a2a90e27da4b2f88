"""The chunked linear + cross-entropy head: a causal LM's per-sample loss without its full logits.

The plain step materialises the logits of every token in fp32 (batch x seq x vocab) and keeps them
for the backward pass. Here the decoder runs to its final hidden states and the head runs over chunks
of tokens (those with a target only); for each chunk the gradient of every token's loss with respect
to its hidden state is computed at once and kept (tokens x hidden, in the model's dtype), and the
chunk's logits are dropped. Because a token's loss depends on its own hidden state only, the backward
pass just scales those rows by each token's upstream gradient, so any weighting of the per-token or
per-sample losses -- the distrust weights included -- gets exact gradients. Two head matmuls per step
instead of three for a recomputing head. Pure PyTorch (CPU, MPS, CUDA); on CUDA each chunk's loss and
its gradient with respect to the logits come from one Triton kernel (``your_ai.step.head_kernel``),
written over the logits, with no fp32 copy of them. ``head="liger"`` uses Liger-Kernel's fused linear
cross-entropy with ``reduction="none"`` instead (CUDA; it recomputes the logits in the backward pass).

``model_per_sample_cross_entropy(model, batch)`` is the per-sample cross-entropy the distrust objective
takes, through this head where the model's head is a plain linear layer (``supports_fast_head``).
A packed batch (several examples a row, ``your_ai.data.packing``) is reduced per example, not per row,
on this path and on the plain one (``plain_per_sample_cross_entropy``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from your_ai.objective.distrust import IGNORE_INDEX, per_sample_cross_entropy
from your_ai.step import head_kernel
from your_ai.step.modes import PLAIN_HEAD_MODEL_TYPES, default_chunk_tokens

HEADS = ("auto", "chunked", "torch", "liger")


def _chunk_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, want_grad: bool,
                  kernel: bool = True):
    """Per-token cross-entropy of one chunk and, with ``want_grad``, d loss_t / d hidden_t per row.

    With ``kernel``, where ``head_kernel.applies`` (CUDA with Triton), the loss and the gradient
    with respect to the logits come from one Triton kernel that writes that gradient over the
    logits; otherwise from PyTorch ops on an fp32 copy of the logits."""
    logits = F.linear(hidden, weight)
    if kernel and head_kernel.applies(logits):
        losses = head_kernel.cross_entropy_rows(logits, targets, want_grad)
        return losses, (logits @ weight if want_grad else None)
    work = logits.float()  # the plain step's ``logits.float()``; the same tensor when already fp32
    del logits
    lse = torch.logsumexp(work, dim=-1)
    losses = lse - work.gather(1, targets[:, None]).squeeze(1)
    if not want_grad:
        return losses, None
    work.sub_(lse[:, None]).exp_()  # softmax
    work.scatter_add_(1, targets[:, None], work.new_full((targets.numel(), 1), -1.0))
    return losses, work.to(weight.dtype) @ weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of ``hidden @ weight.T``, chunk by chunk, gradient computed in the forward.

    ``weight`` must not need a gradient (the head of a LoRA model is frozen).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens, want_grad, kernel):
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grads = torch.empty_like(hidden) if want_grad else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            stop = start + chunk_tokens
            losses[start:stop], chunk_grad = _chunk_losses(hidden[start:stop], weight, targets[start:stop], want_grad,
                                                           kernel)
            if want_grad:
                grads[start:stop] = chunk_grad
        if want_grad:
            ctx.save_for_backward(grads)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (grads,) = ctx.saved_tensors
        return (grads * grad_losses[:, None]).to(grads.dtype), None, None, None, None, None


def _checkpointed_token_losses(hidden, weight, targets, chunk_tokens):
    """Per-token cross-entropy with each chunk recomputed in the backward pass (a trainable head)."""
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(rows, head_weight, chunk_targets):
        return F.cross_entropy(F.linear(rows, head_weight).float(), chunk_targets, reduction="none")

    pieces = [
        checkpoint(chunk_loss, hidden[start:start + chunk_tokens], weight, targets[start:start + chunk_tokens],
                   use_reentrant=False)
        for start in range(0, hidden.shape[0], chunk_tokens)
    ]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def _liger_token_losses(hidden, weight, targets):
    from liger_kernel.transformers.fused_linear_cross_entropy import (
        LigerFusedLinearCrossEntropyLoss,
    )

    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="none")(weight, hidden, targets)


def resolve_head(head: str, device_type: str) -> str:
    """The head to run: ``auto`` is ``chunked``, which measured at least as fast as Liger's per-token fused
    linear cross-entropy (bench/RESULTS.md). ``chunked`` takes each chunk's loss and gradient from
    ``head_kernel`` where it applies (CUDA); ``torch`` is the same chunked head with PyTorch ops everywhere."""
    if head not in HEADS:
        raise ValueError(f"head {head!r} must be one of {', '.join(HEADS)}")
    if head == "auto":
        return "chunked"
    if head == "liger" and device_type != "cuda":
        raise ValueError("head 'liger' needs a CUDA device")
    return head


def linear_cross_entropy_per_sample(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_tokens: int | None = None,
    head: str = "chunked",
    sample_index: torch.Tensor | None = None,
    samples: int | None = None,
) -> torch.Tensor:
    """``per_sample_cross_entropy(hidden @ weight.T, labels)`` without materialising the logits.

    ``hidden`` is (batch, seq, hidden), ``labels`` (batch, seq) aligned with the inputs (the
    shift happens here; -100 is left out). Only tokens with a target go through the head, in
    chunks of ``chunk_tokens`` (default: ``default_chunk_tokens(vocab)``). Returns fp32 (batch,); for a
    packed batch (``sample_index``, ``samples``: see ``next_token_targets``) fp32 (samples,).
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not match")
    head = resolve_head(head, hidden.device.type)
    batch, seq, width = hidden.shape
    chunk_tokens = chunk_tokens or default_chunk_tokens(weight.shape[0])
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    targets, rows, owners, samples = next_token_targets(labels, sample_index, samples)
    selected = hidden.reshape(batch * seq, width).index_select(0, rows)
    if head == "liger":
        losses = _liger_token_losses(selected, weight, targets)
    elif weight.requires_grad and torch.is_grad_enabled():
        losses = _checkpointed_token_losses(selected, weight, targets, chunk_tokens)
    else:
        want_grad = torch.is_grad_enabled() and selected.requires_grad
        losses = _LinearCrossEntropy.apply(selected, weight, targets, chunk_tokens, want_grad, head == "chunked")
    return per_sample_mean(losses, owners, samples)


def next_token_targets(labels: torch.Tensor, sample_index: torch.Tensor | None = None, samples: int | None = None):
    """The next-token targets of a batch, flattened: (targets, their positions in the flattened (batch x seq)
    inputs, the sample each belongs to, the number of samples). Without ``sample_index`` each row is a sample;
    with it (a packed batch: the sample of each token, -1 on padding) there are ``samples`` samples."""
    batch, seq = labels.shape
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    flat_targets = shifted.reshape(-1)
    rows = torch.nonzero(flat_targets != IGNORE_INDEX).squeeze(1)
    if sample_index is None:
        return flat_targets.index_select(0, rows), rows, torch.div(rows, seq, rounding_mode="floor"), batch
    owner = torch.full_like(sample_index, -1)
    owner[:, :-1] = sample_index[:, 1:]
    return flat_targets.index_select(0, rows), rows, owner.reshape(-1).index_select(0, rows), samples


def per_sample_mean(token_losses: torch.Tensor, owners: torch.Tensor, samples: int) -> torch.Tensor:
    """The mean of ``token_losses`` per sample (``owners``: each token's sample), fp32 (samples,); a sample
    without a target token gets 0."""
    zeros = torch.zeros(samples, dtype=torch.float32, device=token_losses.device)
    sums = zeros.index_add(0, owners, token_losses.float())
    counts = zeros.index_add(0, owners, torch.ones_like(token_losses, dtype=torch.float32))
    return sums / counts.clamp(min=1)


def model_inputs(batch: dict) -> dict:
    """What the model is given of ``batch``: a packed batch (``position_ids``) goes without its 2D attention mask,
    so the model masks attention per example from the restarting positions."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def batch_samples(batch: dict) -> tuple[torch.Tensor | None, int]:
    """A batch's ``sample_index`` (None unpacked) and its number of samples."""
    return batch.get("sample_index"), batch["auth_weight"].shape[0]


def plain_per_sample_cross_entropy(model, batch: dict) -> torch.Tensor:
    """Per-sample mean next-token cross-entropy of ``batch`` from the model's full logits."""
    logits = model(**model_inputs(batch)).logits
    sample_index, samples = batch_samples(batch)
    if sample_index is None:
        return per_sample_cross_entropy(logits, batch["labels"])
    targets, rows, owners, samples = next_token_targets(batch["labels"], sample_index, samples)
    selected = logits.reshape(-1, logits.shape[-1]).index_select(0, rows).float()
    losses = F.cross_entropy(selected, targets, reduction="none")
    return per_sample_mean(losses, owners, samples)

def causal_lm(model):
    """The Hugging Face causal LM inside a PEFT model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_fast_head(model) -> bool:
    """True when the model's logits are a plain bias-free linear map of its decoder's output."""
    lm = causal_lm(model)
    config = lm.config
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    head = lm.get_output_embeddings()
    return head is not None and getattr(head, "bias", None) is None and hasattr(lm, lm.base_model_prefix)


def model_per_sample_cross_entropy(model, batch: dict, *, head: str = "auto", chunk_tokens: int | None = None):
    """Per-sample mean next-token cross-entropy of ``batch`` through the chunked head.

    The same quantity as ``per_sample_cross_entropy(model(...).logits, labels)``; a model whose
    head is not a plain linear layer (``supports_fast_head``) takes that plain path.
    """
    if not supports_fast_head(model):
        return plain_per_sample_cross_entropy(model, batch)
    lm = causal_lm(model)
    backbone = getattr(lm, lm.base_model_prefix)
    hidden = backbone(**model_inputs(batch)).last_hidden_state
    sample_index, samples = batch_samples(batch)
    return linear_cross_entropy_per_sample(hidden, lm.get_output_embeddings().weight, batch["labels"],
                                           chunk_tokens=chunk_tokens, head=head, sample_index=sample_index,
                                           samples=samples)
