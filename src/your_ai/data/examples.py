"""Records as training sees them: tokenised examples, batches and the data order.

``tokenize_records`` turns ``Record``s into ``Example``s (``labels`` -100 where nothing is learned: the
prompt of a prompt/completion record, the non-assistant turns of a chat), ``collate`` pads a batch on the
right, and ``BatchSampler`` gives a shuffled order reproducible from the seed and a ``DataPosition``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from your_ai.data.records import DataError, Record
from your_ai.objective.distrust import IGNORE_INDEX


@dataclass
class Example:
    """One tokenised record: ``labels`` is ``input_ids`` with IGNORE_INDEX where nothing is learned."""

    input_ids: list[int]
    labels: list[int]
    auth_weight: float
    prov_entropy: float

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def tokenize_record(record: Record, tokenizer, max_seq_length: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, exact) for one record, truncated to ``max_seq_length`` tokens.

    text: every token is learned, with the end-of-sequence token appended.
    prompt/completion: only the completion (and the end-of-sequence token) is learned.
    chat: rendered with the tokenizer's chat template; only assistant turns are learned when the
    template renders each turn as a prefix of the next (``exact`` is False when the whole
    conversation had to be learned instead).
    A text far longer than ``max_seq_length`` tokens is tokenised only as far as the kept
    tokens need (``_encode_prefix``), so memory stays bounded whatever the record's length.
    """
    def encode(text: str, special: bool = True) -> list[int]:
        return tokenizer(text, add_special_tokens=special)["input_ids"]

    exact = True
    if record.kind == "text":
        ids = _with_eos(_encode_prefix(encode, record.fields["text"], max_seq_length), tokenizer)
        labels = list(ids)
    elif record.kind == "prompt":
        prompt = list(_encode_prefix(encode, record.fields["prompt"], max_seq_length))
        room = max_seq_length - len(prompt)
        completion = []  # nothing of it would be kept when the prompt fills max_seq_length
        if room > 0:
            completion = _with_eos(
                _encode_prefix(lambda text: encode(text, special=False), record.fields["completion"], room), tokenizer
            )
        ids = prompt + completion
        labels = [IGNORE_INDEX] * len(prompt) + completion
    else:
        ids, labels, exact = _tokenize_chat(record, tokenizer, max_seq_length)
    return ids[:max_seq_length], labels[:max_seq_length], exact


# A text longer than (tokens kept) x PREFIX_CHARS_PER_TOKEN characters is tokenised by prefixes:
# tokens of real vocabularies are far shorter than 16 characters on average.
PREFIX_CHARS_PER_TOKEN = 16
# Tokens a prefix must hold beyond the kept ones, so that where it was cut cannot reach them.
PREFIX_MARGIN_TOKENS = 16


def _encode_prefix(encode, text: str, keep: int):
    """``encode(text)``, or ``encode`` of a prefix of ``text`` whose first ``keep`` ids are those
    of ``encode(text)``: the prefix is doubled until it holds ``PREFIX_MARGIN_TOKENS`` more than
    ``keep`` ids and a prefix twice as long starts with the same ``keep`` ids. ``encode`` returns
    the ids, or a tuple whose first item is the ids."""
    def ids(encoded):
        return encoded[0] if isinstance(encoded, tuple) else encoded

    size = max(keep, 1) * PREFIX_CHARS_PER_TOKEN
    if len(text) <= 2 * size:
        return encode(text)
    shorter = encode(text[:size])
    while 2 * size < len(text):
        size *= 2
        longer = encode(text[:size])
        far_enough = len(ids(shorter)) >= keep + PREFIX_MARGIN_TOKENS
        if far_enough and list(ids(longer)[:keep]) == list(ids(shorter)[:keep]):
            return longer
        shorter = longer
    return encode(text)


def _with_eos(ids: list[int], tokenizer) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        return list(ids) + [eos]
    return list(ids)


def _tokenize_chat(record: Record, tokenizer, max_seq_length: int) -> tuple[list[int], list[int], bool]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(record.file, record.line, "chat record, but the model's tokenizer has no chat template")
    messages = record.fields["messages"]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as error:  # the template itself raises on conversations it does not accept
        raise DataError(record.file, record.line, f"the chat template rejects this conversation: {error}") from None
    spans = _assistant_spans(messages, tokenizer, text)
    if spans is None or not getattr(tokenizer, "is_fast", False):
        ids = _encode_prefix(lambda part: tokenizer(part, add_special_tokens=False)["input_ids"], text, max_seq_length)
        return list(ids), list(ids), False

    def encode(part: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = tokenizer(part, add_special_tokens=False, return_offsets_mapping=True)
        return encoding["input_ids"], encoding["offset_mapping"]

    ids, offsets = _encode_prefix(encode, text, max_seq_length)
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, offsets)
    ]
    return list(ids), labels, True


def _assistant_spans(messages: list[dict], tokenizer, text: str) -> list[tuple[int, int]] | None:
    """Character spans of the assistant turns in ``text``, or None if the template is not prefix-stable."""
    spans = []
    try:
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = (
                tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
                if index else ""
            )
            through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
            if not (text.startswith(through) and through.startswith(before)):
                return None
            spans.append((len(before), len(through)))
    except Exception:  # a template that cannot render a partial conversation
        return None
    return spans


def tokenize_records(
    records: list[Record], weights: list[float], entropies: list[float], tokenizer, max_seq_length: int
) -> tuple[list[Example], int]:
    """Examples for ``records`` (with their scores), and how many chat records were learned whole."""
    examples, inexact = [], 0
    for record, weight, entropy in zip(records, weights, entropies, strict=True):
        ids, labels, exact = tokenize_record(record, tokenizer, max_seq_length)
        inexact += not exact
        examples.append(Example(ids, labels, weight, entropy))
    return examples, inexact


def collate(examples: list[Example], pad_token_id: int) -> dict:
    """Right-padded tensors: input_ids, attention_mask, labels (IGNORE_INDEX on padding),
    auth_weight and prov_entropy (float64)."""
    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :size] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, :size] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "auth_weight": torch.tensor([e.auth_weight for e in examples], dtype=torch.float64),
        "prov_entropy": torch.tensor([e.prov_entropy for e in examples], dtype=torch.float64),
    }


@dataclass
class DataPosition:
    """Where the next batch starts: ``index`` into the shuffled order of ``epoch``."""

    epoch: int = 0
    index: int = 0


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch ``epoch``: a permutation that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


class BatchSampler:
    """Indices of successive batches, epoch after epoch, reproducible from (seed, position).

    An epoch's last batch may be smaller than ``batch_size``; the next batch starts a new epoch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, position: DataPosition | None = None):
        if size < 1:
            raise ValueError("no training examples")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.position = position or DataPosition()
        self._order_epoch, self._order = -1, []

    def next(self) -> list[int]:
        if self._order_epoch != self.position.epoch:
            self._order, self._order_epoch = epoch_order(self.size, self.seed, self.position.epoch), self.position.epoch
        start = self.position.index
        indices = self._order[start : start + self.batch_size]
        end = start + len(indices)
        self.position = DataPosition(self.position.epoch + 1, 0) if end >= self.size else DataPosition(self.position.epoch, end)
        return indices
