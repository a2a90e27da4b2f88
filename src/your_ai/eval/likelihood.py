"""Score text under a model: the cross-entropy and perplexity of a data set, and the
log-likelihood of a continuation after a context.

``evaluate_records`` gives the token-weighted mean cross-entropy and perplexity of a data set
(and of each record), scored exactly as training scores it; ``sequence_logprobs`` gives the
log-likelihood of a continuation after a context, and ``choice_logprobs`` that of each answer
of a multiple-choice question, which multiple-choice evaluation compares.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from your_ai.data.examples import Example, collate, tokenize_record
from your_ai.eval.inference import InferenceError, InferenceModel, start_token
from your_ai.objective.distrust import IGNORE_INDEX, per_sample_cross_entropy


@dataclass
class RecordScore:
    line: int
    tokens: int  # target tokens scored
    cross_entropy: float | None  # mean over its tokens; None when nothing was left to score


@dataclass
class EvalResult:
    cross_entropy: float  # token-weighted mean over the data set
    perplexity: float
    record_count: int
    token_count: int
    records: list[RecordScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "cross_entropy": self.cross_entropy,
            "perplexity": self.perplexity,
            "record_count": self.record_count,
            "token_count": self.token_count,
            "records": [
                {"line": r.line, "tokens": r.tokens, "cross_entropy": r.cross_entropy} for r in self.records
            ],
        }


def _batched_scores(im: InferenceModel, examples: Sequence[tuple[list[int], list[int]]], batch_size: int):
    """(mean cross-entropy, target token count) per ``(input_ids, labels)`` example, in order.

    Batches are built as training builds them (``data.examples.collate``), grouped by length to keep
    padding small.
    """
    pad = im.tokenizer.pad_token_id if im.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    scores: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate([Example(list(examples[i][0]), list(examples[i][1]), 0.0, 0.0) for i in chunk], pad)
            logits = im.logits(batch["input_ids"], batch["attention_mask"])
            labels = batch["labels"].to(logits.device)
            ce = per_sample_cross_entropy(logits, labels).double().cpu()
            counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
            for row, index in enumerate(chunk):
                scores[index] = (float(ce[row]), int(counts[row]))
    return scores


def evaluate_records(
    im: InferenceModel,
    records: Iterable,
    max_seq_length: int = 1024,
    batch_size: int = 8,
) -> EvalResult:
    """Token-weighted mean cross-entropy (nats) and perplexity of ``records`` (``data.records.Record``),
    scored exactly as training scores them (the same tokens are targets), and per record.
    """
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length={max_seq_length} must be at least 2")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    records = list(records)
    if not records:
        raise InferenceError("no records to evaluate")
    examples = []
    for record in records:
        input_ids, labels, _ = tokenize_record(record, im.tokenizer, max_seq_length)
        examples.append((input_ids, labels))
    scores = _batched_scores(im, examples, batch_size)
    per_record = []
    total_loss = 0.0
    total_tokens = 0
    for record, (ce, count) in zip(records, scores):
        per_record.append(RecordScore(record.line, count, ce if count else None))
        total_loss += ce * count
        total_tokens += count
    if total_tokens == 0:
        raise InferenceError(
            f"no record has a token to score within --max-seq-length {max_seq_length}"
        )
    mean = total_loss / total_tokens
    return EvalResult(
        cross_entropy=mean,
        perplexity=math.exp(mean) if mean < 700 else math.inf,
        record_count=len(records),
        token_count=total_tokens,
        records=per_record,
    )


def sequence_logprobs(
    im: InferenceModel, pairs: Sequence[tuple[str, str]], batch_size: int = 8
) -> list[float]:
    """For each ``(context, continuation)``: the sum of the log-probabilities (nats) of the
    continuation's tokens after the context. The context is encoded with the tokenizer's
    special tokens (the beginning-of-sequence token), the continuation without them.
    """
    examples = []
    for context, continuation in pairs:
        context_ids = list(im.tokenizer(context).input_ids) or [start_token(im.tokenizer)]
        continuation_ids = list(im.tokenizer(continuation, add_special_tokens=False).input_ids)
        if not continuation_ids:
            raise ValueError(f"continuation {continuation!r} has no tokens to score")
        ids = context_ids + continuation_ids
        examples.append((ids, [IGNORE_INDEX] * len(context_ids) + continuation_ids))
    return [-ce * count for ce, count in _batched_scores(im, examples, batch_size)]


def sequence_logprob(im: InferenceModel, context: str, continuation: str) -> float:
    """Sum of the log-probabilities (nats) of ``continuation``'s tokens after ``context``."""
    return sequence_logprobs(im, [(context, continuation)])[0]


def continuation(answer: str) -> str:
    """How an answer is scored after its question: one space, then the answer."""
    return " " + answer.strip()


def choice_logprobs(im: InferenceModel, sets: Sequence[tuple[str, Sequence[str]]], batch_size: int,
                    advance: Callable[[int], None] | None = None) -> list[list[tuple[float, float]]]:
    """For each ``(context, answers)``: ``(summed, per-byte)`` log-likelihood of each answer,
    scored as ``continuation(answer)`` after ``context``; ``advance(n)`` as each ``n`` sets are done."""
    results: list[list[tuple[float, float]]] = []
    for start in range(0, len(sets), batch_size):
        chunk = sets[start:start + batch_size]
        pairs = [(context, continuation(answer)) for context, answers in chunk for answer in answers]
        sums = iter(sequence_logprobs(im, pairs, batch_size=batch_size))
        for _, answers in chunk:
            row = []
            for answer in answers:
                total = next(sums)
                row.append((total, total / len(continuation(answer).encode("utf-8"))))
            results.append(row)
        if advance:
            advance(len(chunk))
    return results


def format_eval_result(result: EvalResult, im: InferenceModel, data: str | os.PathLike) -> str:
    return "\n".join([
        f"Model:          {im.label}",
        f"Data:           {data}",
        f"Records:        {result.record_count}",
        f"Tokens scored:  {result.token_count}",
        f"Cross-entropy:  {result.cross_entropy:.4f} nats/token",
        f"Perplexity:     {result.perplexity:.2f}",
    ])
