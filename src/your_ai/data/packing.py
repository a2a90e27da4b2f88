"""Sample packing: several training examples share one row of up to ``--max-seq-length`` tokens.

Rows are filled by best-fit decreasing over a window of the epoch's shuffled order: the next
``PACK_WINDOW`` examples are taken longest first, and each goes into the open row of the window
with the least room that still holds it (a new row when none does). Best-fit decreasing leaves
less room unused than first-fit on long-tailed lengths, and the window keeps the epoch's shuffle
(an example lands within one window of where the order put it) and bounds the work per example.
The rows of an epoch depend only on (seed, epoch, the examples' lengths, the row length), so a
resumed run draws exactly the rows the uninterrupted run would have.

A packed batch (``collate_packed``) has no attention across examples: ``position_ids`` restart at 0
for every example and no 2D ``attention_mask`` is passed to the model, so the model's causal mask
becomes block-diagonal (transformers builds it from the positions for eager and SDPA attention, a
block mask for FlexAttention, variable-length attention for FlashAttention). ``sample_index`` names
the example each token belongs to (-1 on padding), so the loss is reduced per example, each with its
own distrust weight: the same per-sample values as the examples unpacked.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from your_ai.data.examples import DataPosition, Example, epoch_order
from your_ai.objective.distrust import IGNORE_INDEX

PACK_WINDOW = 1024  # examples packed together by best-fit decreasing
PAYS_SAVING = 0.10  # packing is on by default when it would compute at least this share fewer tokens


def record_lengths(examples) -> list[int]:
    """The token count of each example: from a tokenized cache's offsets when it has them, else counted."""
    if hasattr(examples, "lengths"):
        return examples.lengths()
    return [len(example.input_ids) for example in examples]


def pack_lengths(lengths: list[int], row_length: int) -> list[list[int]]:
    """Rows of positions into ``lengths`` (in the given order, window by window) whose lengths sum to at most
    ``row_length``; best-fit decreasing within each window of ``PACK_WINDOW``."""
    rows: list[list[int]] = []
    for start in range(0, len(lengths), PACK_WINDOW):
        window = range(start, min(start + PACK_WINDOW, len(lengths)))
        rows.extend(_best_fit_decreasing(sorted(window, key=lambda i: (-lengths[i], i)), lengths, row_length))
    return rows


def _best_fit_decreasing(order: list[int], lengths: list[int], row_length: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (room left, row) of the open rows, sorted
    for index in order:
        size = min(lengths[index], row_length)
        place = bisect.bisect_left(room, (size, -1))
        if place == len(room):
            rows.append([index])
            left, row = row_length - size, len(rows) - 1
        else:
            left, row = room.pop(place)
            rows[row].append(index)
            left -= size
        if left > 0:
            bisect.insort(room, (left, row))
    return rows


def padding_share(lengths: list[int], rows: list[list[int]], width_of) -> float:
    """The share of padding in batches of ``rows`` (positions into ``lengths``), each batch padded to
    ``width_of(batch)`` tokens a row."""
    real = sum(lengths[i] for row in rows for i in row)
    total = sum(width_of(row) for row in rows)
    return 1.0 - real / total if total else 0.0


@dataclass(frozen=True)
class PackingEstimate:
    """Padding of the first epoch's batches, unpacked (each batch padded to its longest example) and packed
    (each batch of rows padded to its longest row)."""

    unpacked_padding: float
    packed_padding: float
    rows: int  # packed rows in an epoch
    examples: int

    @property
    def saving(self) -> float:
        """The share of the tokens computed (records and padding) that packing saves: the records are the same."""
        return 1.0 - (1.0 - self.unpacked_padding) / max(1.0 - self.packed_padding, 1e-9)

    @property
    def pays(self) -> bool:
        return self.saving >= PAYS_SAVING

    def describe(self, on: bool, why: str) -> str:
        return (f"packing {'on' if on else 'off'} ({why}): unpacked batches would be {self.unpacked_padding:.0%} "
                f"padding, packed rows {self.packed_padding:.0%}, {self.saving:.0%} fewer tokens computed; "
                f"{self.examples} records in {self.rows} rows an epoch")


def estimate_packing(lengths: list[int], batch_size: int, row_length: int, seed: int) -> PackingEstimate:
    """The padding of unpacked and packed batches of ``batch_size`` over the first epoch's order."""
    order = epoch_order(len(lengths), seed, 0)
    ordered = [lengths[i] for i in order]
    unpacked = padding_share(ordered, _batches(len(ordered), batch_size),
                             lambda batch: len(batch) * max(ordered[i] for i in batch))
    rows = pack_lengths(ordered, row_length)
    row_lengths = [sum(ordered[i] for i in row) for row in rows]
    packed = padding_share(row_lengths, _batches(len(rows), batch_size), lambda batch: len(batch) * max(row_lengths[i] for i in batch))
    return PackingEstimate(unpacked, packed, len(rows), len(lengths))


def _batches(size: int, batch_size: int) -> list[list[int]]:
    return [list(range(start, min(start + batch_size, size))) for start in range(0, size, batch_size)]


class PackedBatchSampler:
    """Batches of packed rows (each a list of example indices), epoch after epoch, reproducible from
    (seed, position); ``position.index`` counts rows. An epoch's last batch may hold fewer rows."""

    def __init__(self, lengths: list[int], batch_size: int, row_length: int, seed: int,
                 position: DataPosition | None = None):
        if not lengths:
            raise ValueError("no training examples")
        self.lengths, self.batch_size, self.row_length, self.seed = lengths, batch_size, row_length, seed
        self.position = position or DataPosition()
        self._rows_epoch, self._rows = -1, []

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """The packed rows of ``epoch``: the epoch's shuffled order packed window by window."""
        order = epoch_order(len(self.lengths), self.seed, epoch)
        rows = pack_lengths([self.lengths[i] for i in order], self.row_length)
        return [[order[i] for i in row] for row in rows]

    def next(self) -> list[list[int]]:
        if self._rows_epoch != self.position.epoch:
            self._rows, self._rows_epoch = self.epoch_rows(self.position.epoch), self.position.epoch
        start = self.position.index
        rows = self._rows[start : start + self.batch_size]
        end = start + len(rows)
        done = end >= len(self._rows)
        self.position = DataPosition(self.position.epoch + 1, 0) if done else DataPosition(self.position.epoch, end)
        return rows


def collate_packed(rows: list[list[Example]], pad_token_id: int) -> dict:
    """Rows of examples as one batch: ``input_ids``, ``labels`` (IGNORE_INDEX on padding and on each example's
    first token, so no example learns to predict the next one's start), ``position_ids`` restarting per
    example, ``sample_index`` (the example of each token, numbered across the batch; -1 on padding),
    ``attention_mask`` (1 on real tokens; counted, not given to the model), and per example
    ``auth_weight`` and ``prov_entropy`` (float64)."""
    length = max(sum(len(example.input_ids) for example in row) for row in rows)
    shape = (len(rows), length)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    sample_index = torch.full(shape, -1, dtype=torch.long)
    examples = [example for row in rows for example in row]
    sample = 0
    for number, row in enumerate(rows):
        start = 0
        for example in row:
            stop = start + len(example.input_ids)
            input_ids[number, start:stop] = torch.tensor(example.input_ids, dtype=torch.long)
            labels[number, start + 1 : stop] = torch.tensor(example.labels[1:], dtype=torch.long)
            position_ids[number, start:stop] = torch.arange(stop - start)
            sample_index[number, start:stop] = sample
            start, sample = stop, sample + 1
        position_ids[number, start:] = torch.arange(length - start)  # padding: a segment of its own
    return {
        "input_ids": input_ids,
        "attention_mask": (sample_index >= 0).long(),
        "labels": labels,
        "position_ids": position_ids,
        "sample_index": sample_index,
        "auth_weight": torch.tensor([e.auth_weight for e in examples], dtype=torch.float64),
        "prov_entropy": torch.tensor([e.prov_entropy for e in examples], dtype=torch.float64),
    }
