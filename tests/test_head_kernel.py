"""The head's Triton cross-entropy kernel, run by Triton's interpreter on CPU tensors
(on CUDA: tests/test_fast_step.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from your_ai.step import head_kernel

needs_triton = pytest.mark.skipif(head_kernel.triton is None, reason="needs the triton package")

INTERPRETED_CHECK = r"""
import json, torch, torch.nn.functional as F
from your_ai.step import head_kernel
from your_ai.step.head import linear_cross_entropy_per_sample
assert head_kernel.INTERPRETED and head_kernel.applies(torch.zeros(2, 3))
report = {}
generator = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float16):
    for vocab in (7, 300, 40000):  # 40000: a row read in two blocks of 32768
        logits = (torch.randn(6, vocab, generator=generator) * 3).to(dtype)
        targets = torch.randint(0, vocab, (6,), generator=generator)
        targets[0], targets[1] = 0, vocab - 1  # the first and last columns
        reference = logits.float().clone().requires_grad_()  # a copy: .float() of fp32 logits is the same tensor
        F.cross_entropy(reference, targets, reduction="none").sum().backward()
        want = F.cross_entropy(logits.float(), targets, reduction="none")
        kept = logits.clone()
        only_loss = head_kernel.cross_entropy_rows(kept, targets, want_grad=False)
        work = logits.clone()
        losses = head_kernel.cross_entropy_rows(work, targets, want_grad=True)
        report[f"{dtype}-{vocab}"] = {
            "loss_error": float((losses - want).abs().max()),
            "same_loss_without_grad": bool(torch.equal(only_loss, losses)),
            "logits_kept_without_grad": bool(torch.equal(kept, logits)),
            "grad_error": float((work.float() - reference.grad).abs().max()),
            "loss_dtype": str(losses.dtype), "grad_dtype": str(work.dtype),
        }
# the chunked head through the kernel against the same head with PyTorch ops
hidden = torch.randn(2, 50, 16, generator=generator, requires_grad=True)
weight = torch.randn(300, 16, generator=generator)
labels = torch.randint(0, 300, (2, 50), generator=generator)
labels[1, 30:] = -100
results = {}
for head in ("chunked", "torch"):
    per_sample = linear_cross_entropy_per_sample(hidden, weight, labels, chunk_tokens=32, head=head)
    (grad,) = torch.autograd.grad((per_sample * torch.tensor([1.0, 3.0])).sum(), hidden)
    results[head] = (per_sample.detach(), grad)
report["head"] = {
    "loss_error": float((results["chunked"][0] - results["torch"][0]).abs().max()),
    "grad_error": float((results["chunked"][1] - results["torch"][1]).abs().max()),
    "grad_scale": float(results["torch"][1].abs().max()),
}
print(json.dumps(report))
"""


@needs_triton
def test_interpreted_kernel_gives_cross_entropy_and_its_gradient():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", INTERPRETED_CHECK], env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    head = report.pop("head")
    assert len(report) == 6
    for case, result in report.items():
        fp16 = "float16" in case
        assert result["loss_error"] < 1e-4, case
        assert result["grad_error"] < (1e-3 if fp16 else 1e-6), case  # fp16: the gradient is stored in fp16
        assert result["same_loss_without_grad"] and result["logits_kept_without_grad"], case
        assert result["loss_dtype"] == "torch.float32" and result["grad_dtype"] == ("torch.float16" if fp16 else
                                                                                    "torch.float32"), case
    assert head["loss_error"] < 1e-5 and head["grad_error"] < 1e-6 * max(1.0, head["grad_scale"])


def test_cpu_tensors_take_the_pytorch_ops_and_the_kernel_refuses_them():
    if head_kernel.INTERPRETED:
        pytest.skip("under TRITON_INTERPRET=1 the kernel takes CPU tensors")
    logits = torch.randn(3, 11)
    assert not head_kernel.applies(logits)
    with pytest.raises(ValueError, match="CUDA device"):
        head_kernel.cross_entropy_rows(logits, torch.zeros(3, dtype=torch.long), want_grad=False)
