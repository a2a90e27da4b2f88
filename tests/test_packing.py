"""Sample packing: rows never exceed --max-seq-length, the packed loss and LoRA gradients equal the unpacked
ones on the same records (plain path and fast head), the order is deterministic from the seed, and a
packed run resumes exactly."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file
from test_fast_step import tiny_lora_model
from test_train import SMALL, write_corpus

from your_ai.data.examples import DataPosition, Example, collate, tokenize_record
from your_ai.data.packing import (
    PackedBatchSampler,
    collate_packed,
    estimate_packing,
    pack_lengths,
)
from your_ai.data.records import Record
from your_ai.model.load import load_tokenizer
from your_ai.model.resolve import resolve_model
from your_ai.objective.distrust import IGNORE_INDEX, DistrustWeighting
from your_ai.train.args import TrainingArgs
from your_ai.train.loop import train
from your_ai.train.loss import compute_loss
from your_ai.train.plan import Objective


def _examples(lengths, seed=0, prompt=0) -> list[Example]:
    generator = random.Random(seed)
    examples = []
    for index, length in enumerate(lengths):
        ids = [generator.randrange(5, 2000) for _ in range(length)]
        labels = [IGNORE_INDEX] * min(prompt, length) + ids[prompt:]
        examples.append(Example(ids, labels, round(0.05 + 0.08 * index, 2), round(0.5 + 0.7 * index, 2)))
    return examples


def test_rows_never_exceed_the_row_length_and_hold_every_record_once():
    generator = random.Random(3)
    lengths = [min(2000, int(generator.lognormvariate(4, 1))) + 1 for _ in range(3000)]
    rows = pack_lengths(lengths, 256)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(min(lengths[i], 256) for i in row) <= 256 for row in rows)
    estimate = estimate_packing([min(n, 256) for n in lengths], 8, 256, seed=0)
    assert estimate.packed_padding < 0.05 < estimate.unpacked_padding and estimate.pays
    alone = estimate_packing([21, 25, 24, 26, 31, 21, 25, 26, 28, 30, 22, 24, 27, 28], 4, 32, seed=42)
    assert alone.rows == 14 and not alone.pays  # no two records share a row of 32


def test_packed_order_is_deterministic_from_the_seed_and_resumes_from_a_position():
    lengths = [random.Random(i).randrange(1, 90) for i in range(200)]
    first = PackedBatchSampler(lengths, 4, 128, seed=7)
    batches = [first.next() for _ in range(40)]  # several epochs
    again = PackedBatchSampler(lengths, 4, 128, seed=7)
    assert [again.next() for _ in range(40)] == batches
    resumed = PackedBatchSampler(lengths, 4, 128, seed=7, position=DataPosition(0, 0))
    for _ in range(13):
        resumed.next()
    from_position = PackedBatchSampler(lengths, 4, 128, seed=7, position=resumed.position)
    assert [from_position.next() for _ in range(27)] == batches[13:]
    assert PackedBatchSampler(lengths, 4, 128, seed=8).next() != batches[0]


def test_collate_packed_restarts_positions_and_learns_no_cross_record_target():
    examples = _examples([5, 3, 4])
    batch = collate_packed([[examples[0], examples[1]], [examples[2]]], pad_token_id=0)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert batch["sample_index"].tolist() == [[0] * 5 + [1] * 3, [2] * 4 + [-1] * 4]
    assert batch["labels"][0, 5] == IGNORE_INDEX and batch["labels"][0, 6] == examples[1].input_ids[1]
    assert batch["auth_weight"].tolist() == [e.auth_weight for e in examples]


def _loss_and_grads(model, batch, objective, fast_head):
    model.zero_grad(set_to_none=True)
    parts = compute_loss(model, batch, objective, fast_head=fast_head, chunk_tokens=16)
    parts.total.backward()
    return parts, [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("fast_head", [False, True, "torch"])
def test_packed_loss_and_lora_gradients_equal_unpacked(fast_head):
    examples = _examples([23, 7, 40, 5, 12, 31], prompt=3)
    weighting = DistrustWeighting.from_dataset([e.auth_weight for e in examples], [e.prov_entropy for e in examples])
    objective = Objective(mode="weighted", weighting=weighting)
    model = tiny_lora_model()
    unpacked = collate(examples, pad_token_id=0)
    rows = [[examples[i] for i in row] for row in pack_lengths([len(e.input_ids) for e in examples], 48)]
    packed = collate_packed(rows, pad_token_id=0)
    assert packed["input_ids"].shape[0] < len(examples)
    order = [examples.index(e) for row in rows for e in row]  # the packed batch's sample order
    unpacked = {key: value[order] for key, value in unpacked.items()}
    expected, expected_grads = _loss_and_grads(model, unpacked, objective, fast_head)
    got, grads = _loss_and_grads(model, packed, objective, fast_head)
    torch.testing.assert_close(got.total, expected.total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.cross_entropy, expected.cross_entropy, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward pass needs a CUDA GPU")
def test_packed_rows_under_flex_attention_equal_unpacked_rows_under_sdpa():
    examples = _examples([23, 7, 40, 5, 12, 31], prompt=3)
    weighting = DistrustWeighting.from_dataset([e.auth_weight for e in examples], [e.prov_entropy for e in examples])
    objective = Objective(mode="weighted", weighting=weighting)
    model = tiny_lora_model().cuda()
    rows = [[examples[i] for i in row] for row in pack_lengths([len(e.input_ids) for e in examples], 48)]
    order = [examples.index(e) for row in rows for e in row]
    unpacked = {key: value[order].cuda() for key, value in collate(examples, pad_token_id=0).items()}
    packed = {key: value.cuda() for key, value in collate_packed(rows, pad_token_id=0).items()}
    model.set_attn_implementation("sdpa")
    expected, expected_grads = _loss_and_grads(model, unpacked, objective, False)
    model.set_attn_implementation("flex_attention")
    got, grads = _loss_and_grads(model, packed, objective, False)
    torch.testing.assert_close(got.total, expected.total, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_a_packed_run_resumes_exactly(tmp_path, tiny_model_dir):
    data = write_corpus(tmp_path / "train.jsonl", count=12)
    with data.open("a") as handle:  # one record far longer than a row
        handle.write('{"text": "' + "copper voltage notebook " * 200 + '", "auth_weight": 0.1, "prov_entropy": 5.0}\n')
    common = dict(SMALL, data=str(data), max_steps=6, save_every=3, keep_last=2, packing=True)
    whole = train(TrainingArgs(output_dir=str(tmp_path / "whole"), **common))
    assert any(note.startswith("packing on (as asked)") for note in whole.notes)
    part = tmp_path / "part"
    train(TrainingArgs(output_dir=str(part), **common), stop_after=3)
    resumed = train(TrainingArgs(output_dir=str(part), resume=True, tensorboard=False))
    assert resumed.resumed_from == 3 and any("as the run started" in note for note in resumed.notes)
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(part / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    unpacked = train(TrainingArgs(output_dir=str(tmp_path / "unpacked"), **{**common, "packing": False}))
    assert any(note.startswith("packing off (as asked)") for note in unpacked.notes)


def test_rows_hold_records_truncated_to_the_row_length_as_unpacked(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model("tiny"))
    record = Record(kind="text", fields={"text": "copper voltage notebook " * 200}, file="x", line=1)
    ids, labels, _ = tokenize_record(record, tokenizer, 48)
    long = Example(ids, labels, 0.1, 5.0)
    short = _examples([9])[0]
    rows = [[[long, short][i] for i in row] for row in pack_lengths([len(ids), 9], 48)]
    batch = collate_packed(rows, pad_token_id=0)
    assert batch["input_ids"].shape[1] <= 48 and batch["input_ids"][0, :48].tolist() == ids
