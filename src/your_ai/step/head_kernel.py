"""The chunked head's cross-entropy as one Triton kernel: each token's loss, and its gradient
written over the logits.

For a chunk of logits (tokens x vocab, in the model's dtype) and each token's target,
``cross_entropy_rows`` makes one pass over each row for its log-sum-exp (a running max and
sum in fp32), stores ``lse - logit[target]``, and with ``want_grad`` a second pass writes
``softmax - onehot`` over the row in the logits' dtype. The same numbers as the PyTorch ops in
``your_ai.step.head._chunk_losses`` (an fp32 copy of the chunk, logsumexp, gather, exp,
scatter, a cast back), which pass over an fp32 copy six times; here the chunk is read twice and
written once, and no fp32 copy is made.

It runs where Triton runs: CUDA tensors, with the ``triton`` package PyTorch's CUDA builds
bring (``applies``). Under ``TRITON_INTERPRET=1`` (set before this module is imported) Triton
runs it on CPU tensors of fp32 or fp16, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch ops do the work
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_BLOCK = 32768  # elements of a row read at once


def applies(logits: torch.Tensor) -> bool:
    """Whether ``cross_entropy_rows`` can take ``logits``: Triton installed, a CUDA tensor (any
    tensor when interpreted), a float dtype, rows of contiguous elements."""
    return (triton is not None and (logits.is_cuda or INTERPRETED) and logits.dtype in KERNEL_DTYPES
            and logits.dim() == 2 and logits.stride(1) == 1)


def cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor, want_grad: bool) -> torch.Tensor:
    """Per-row cross-entropy (fp32) of ``logits`` (rows x vocab) against ``targets`` (rows,
    class indices in [0, vocab)). With ``want_grad``, ``logits`` is overwritten with the gradient
    of each row's loss with respect to its logits (``softmax - onehot``, in the logits' dtype)."""
    if not applies(logits):
        raise ValueError(f"the Triton cross-entropy takes 2-D {', '.join(map(str, KERNEL_DTYPES))} logits with "
                         f"contiguous rows on a CUDA device (got {tuple(logits.shape)} {logits.dtype} "
                         f"on {logits.device})")
    rows, vocab = logits.shape
    if targets.shape != (rows,):
        raise ValueError(f"targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return losses
    block = min(MAX_BLOCK, triton.next_power_of_2(vocab))
    _cross_entropy_rows[(rows,)](logits, logits.stride(0), targets.contiguous(), losses, vocab,
                                 WANT_GRAD=want_grad, BLOCK=block, num_warps=max(4, min(32, block // 1024)))
    return losses


if triton is not None:

    @triton.jit
    def _cross_entropy_rows(logits_ptr, row_stride, targets_ptr, losses_ptr, vocab,
                            WANT_GRAD: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        target = tl.load(targets_ptr + row)
        top = float("-inf")
        total = 0.0
        for start in range(0, vocab, BLOCK):
            columns = start + tl.arange(0, BLOCK)
            values = tl.load(row_ptr + columns, mask=columns < vocab, other=float("-inf")).to(tl.float32)
            new_top = tl.maximum(top, tl.max(values, 0))
            total = total * tl.exp(top - new_top) + tl.sum(tl.exp(values - new_top), 0)
            top = new_top
        lse = top + tl.log(total)
        tl.store(losses_ptr + row, lse - tl.load(row_ptr + target).to(tl.float32))
        if WANT_GRAD:
            for start in range(0, vocab, BLOCK):
                columns = start + tl.arange(0, BLOCK)
                inside = columns < vocab
                values = tl.load(row_ptr + columns, mask=inside, other=0.0).to(tl.float32)
                gradient = tl.exp(values - lse)
                gradient = tl.where(columns == target, gradient - 1.0, gradient)
                tl.store(row_ptr + columns, gradient.to(logits_ptr.dtype.element_ty), mask=inside)
