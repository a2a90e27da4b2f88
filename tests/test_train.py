"""The training loop: loss and gradients, tokenisation and batching, resume, defaults, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from your_ai.data.examples import BatchSampler, DataPosition, collate, tokenize_record
from your_ai.data.records import DataError, check_record
from your_ai.data.score_cache import read_file_scores
from your_ai.model.lora import LoraSettings
from your_ai.objective.distrust import IGNORE_INDEX, empirical_distrust_loss
from your_ai.train.args import TrainingArgs, TrainingArgsError, TrainingError
from your_ai.train.defaults import DEFAULTS
from your_ai.train.loop import train
from your_ai.train.loss import compute_loss
from your_ai.train.plan import Objective
from your_ai.train.setup import build_optimizer, load_for_training

SMALL = dict(model="tiny", lora_rank=4, max_seq_length=48, batch_size=2, memory_report_interval=100, tensorboard=False,
             device="cpu")  # the CPU path, also on a machine with a GPU


def write_corpus(path: Path, count: int = 12) -> Path:
    """Plain-text records, some with scores, some left to the scorer."""
    words = ("patent measurement notebook copper current archive experts agree consensus press release "
             "observed voltage letter 1923 laboratory").split()
    with path.open("w") as handle:
        for index in range(count):
            text = " ".join(words[(index * 7 + k * 3) % len(words)] for k in range(10 + index % 5))
            record = {"text": text}
            if index % 3:
                record.update(auth_weight=round(0.05 + 0.07 * index, 2), prov_entropy=round(0.5 + 0.6 * index, 2))
            else:
                record.update(year=1923 if index % 2 else 2024, source_type="patent" if index % 2 else "news")
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def tiny(tiny_model_dir):
    return load_for_training("tiny", LoraSettings(rank=4, layers=4), "cpu")


def _batch(tokenizer, text: str, weight: float, entropy: float) -> dict:
    ids = tokenizer(text)["input_ids"]
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "labels": torch.tensor([ids]),
        "auth_weight": torch.tensor([weight], dtype=torch.float64),
        "prov_entropy": torch.tensor([entropy], dtype=torch.float64),
    }


def _lora_grads(model, batch, objective) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    compute_loss(model, batch, objective).total.backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]


def test_primary_source_moves_the_adapter_32x_more_than_coordinated_one(tiny):
    text = "The copper wire carried a measured current of 3.2 amperes."
    primary = _batch(tiny.tokenizer, text, 0.05, 7.5)
    coordinated = _batch(tiny.tokenizer, text, 0.90, 1.0)
    d_ratio = empirical_distrust_loss(0.05, 7.5) / empirical_distrust_loss(0.90, 1.0)
    assert 31 < d_ratio < 34

    weighted = Objective.from_dataset("weighted", 2.7, 1.0, [0.05, 0.90], [7.5, 1.0])
    g_primary = _lora_grads(tiny.model, primary, weighted)
    g_coordinated = _lora_grads(tiny.model, coordinated, weighted)
    norm = lambda grads: math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))  # noqa: E731
    assert norm(g_coordinated) > 0
    assert norm(g_primary) / norm(g_coordinated) == pytest.approx(d_ratio, rel=1e-4)

    additive = Objective(mode="additive", alpha=2.7, lambda_weight=1.0)
    a_primary = _lora_grads(tiny.model, primary, additive)
    a_coordinated = _lora_grads(tiny.model, coordinated, additive)
    assert all(torch.equal(x, y) for x, y in zip(a_primary, a_coordinated))
    # ...while the logged totals differ by the (constant) distrust term
    with torch.no_grad():
        total_p = compute_loss(tiny.model, primary, additive)
        total_c = compute_loss(tiny.model, coordinated, additive)
    assert float(total_p.cross_entropy) == pytest.approx(float(total_c.cross_entropy))
    assert float(total_p.total - total_c.total) == pytest.approx(
        empirical_distrust_loss(0.05, 7.5) - empirical_distrust_loss(0.90, 1.0), rel=1e-4)


def test_optimizer_holds_only_lora_parameters_and_a_step_changes_them(tiny):
    optimizer = build_optimizer(tiny.model, 1e-2)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and group["weight_decay"] == 0.01
    lora = [p for n, p in tiny.model.named_parameters() if "lora_" in n]
    assert len(group["params"]) == len(lora) > 0
    before = [p.detach().clone() for p in lora]
    batch = _batch(tiny.tokenizer, "a short text to learn", 0.1, 5.0)
    compute_loss(tiny.model, batch, Objective(mode="additive")).total.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, lora))
    assert tiny.notes == []  # 4 layers asked of a 4-layer model: nothing clamped


def test_load_for_training_synthetic_and_checkpointed(tiny_model_dir):
    synthetic = load_for_training("tiny", LoraSettings(rank=2, layers=32), "cpu", synthetic=True,
                                  grad_checkpoint=True)
    assert synthetic.tokenizer is None and synthetic.resolved is None
    assert synthetic.architecture_name == "LlamaForCausalLM" and synthetic.dtype == torch.float32
    assert synthetic.notes == ["--lora-layers 32 clamped to the model's 4 layers"]
    ids = torch.randint(0, 2048, (2, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
             "auth_weight": torch.tensor([0.1, 0.5]), "prov_entropy": torch.tensor([4.0, 2.0])}
    synthetic.model.train()
    parts = compute_loss(synthetic.model, batch, Objective.from_dataset("weighted", 2.7, 1.0, [0.1, 0.5], [4.0, 2.0]))
    parts.total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in synthetic.model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------- tokenising and batching

def test_labels_cover_only_what_is_learned(tiny):
    tokenizer = tiny.tokenizer
    prompt = check_record({"prompt": "Question: who measured it?", "completion": " The lab did."}, "f.jsonl", 1)
    ids, labels, exact = tokenize_record(prompt, tokenizer, 512)
    prompt_len = len(tokenizer("Question: who measured it?")["input_ids"])
    assert exact and labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tokenizer.eos_token_id

    chat = check_record({"messages": [
        {"role": "user", "content": "What did the notebook record?"},
        {"role": "assistant", "content": "Voltage readings."},
        {"role": "user", "content": "When?"},
        {"role": "assistant", "content": "In 1956."},
    ]}, "f.jsonl", 2)
    ids, labels, exact = tokenize_record(chat, tokenizer, 512)
    assert exact
    learned = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert "Voltage readings." in learned and "In 1956." in learned
    assert "notebook" not in learned and "When?" not in learned

    text = check_record({"text": "word " * 100}, "f.jsonl", 3)
    ids, labels, _ = tokenize_record(text, tokenizer, 16)
    assert len(ids) == len(labels) == 16 and ids == labels


def test_collate_pads_right_and_masks_padding(tiny):
    from your_ai.data.examples import Example

    batch = collate([Example([5, 6, 7], [5, 6, 7], 0.1, 2.0), Example([8], [IGNORE_INDEX], 0.9, 1.0)], pad_token_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [IGNORE_INDEX] * 3]
    assert batch["auth_weight"].dtype == torch.float64 and batch["prov_entropy"].tolist() == [2.0, 1.0]


def test_batch_order_resumes_from_a_position():
    full = BatchSampler(7, 3, seed=5)
    batches = [full.next() for _ in range(6)]
    assert sorted(sum(batches[:3], [])) == list(range(7))  # epoch 0 = 3, 3, 1
    assert batches[:3] != batches[3:]  # each epoch reshuffled
    restarted = BatchSampler(7, 3, seed=5, position=DataPosition(epoch=1, index=3))
    assert [restarted.next() for _ in range(2)] == batches[4:6]


def test_records_without_scores_are_scored_from_text(tmp_path):
    from your_ai.data.records import read_records
    from your_ai.objective.scoring import score_document

    path = write_corpus(tmp_path / "c.jsonl", 3)
    records, scores = read_records(path).records, read_file_scores(path)
    weights, entropies = scores.auth_weights.tolist(), scores.prov_entropies.tolist()
    assert scores.computed == 1 and weights[1:] == [0.12, 0.19]
    expected = score_document(records[0].document_text(), records[0].metadata)
    assert (weights[0], entropies[0]) == (expected.authority_weight, expected.provenance_entropy)


# ---------------------------------------------------------------------------- the loop

def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, tiny_model_dir):
    data = write_corpus(tmp_path / "train.jsonl")
    common = dict(SMALL, data=str(data), max_steps=8, save_every=3, keep_last=2)
    whole = train(TrainingArgs(output_dir=str(tmp_path / "whole"), **common))
    assert whole.steps == 8 and not whole.stopped_early

    part = tmp_path / "part"
    first = train(TrainingArgs(output_dir=str(part), **common), stop_after=4)
    assert first.stopped_early and first.steps == 4
    assert not (part / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["latest", "step-000003", "step-000004"]
    # a checkpoint write killed half way: a newer temporary directory with partial files
    dead = part / "checkpoints" / ".tmp-step-000006-x1y2"
    dead.mkdir()
    (dead / "adapter_model.safetensors").write_bytes(b"partial")

    resumed = train(TrainingArgs(output_dir=str(part), resume=True, tensorboard=False))
    assert resumed.resumed_from == 4 and resumed.steps == 8
    assert not dead.exists()
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(part / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # keep-last 2: the newest two remain
    assert sorted(p.name for p in (part / "checkpoints").glob("step-*")) == ["step-000006", "step-000008"]
    config = json.loads((part / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"

    with pytest.raises(TrainingError, match="already holds a training run"):
        train(TrainingArgs(output_dir=str(part), **common))
    with pytest.raises(TrainingArgsError, match="--lora-rank 8 differs"):
        train(TrainingArgs(output_dir=str(part), resume=True, lora_rank=8))


def test_resumed_run_keeps_the_device_it_trained_on(tmp_path, tiny_model_dir, monkeypatch):
    """On a machine whose best device is a GPU (CUDA or MPS), a run started with --device cpu and
    resumed without --device goes on on the CPU, as the checkpoint's settings say."""
    import your_ai.train.loop as train_module

    real_pick = train_module.pick_device

    def pick_device(requested=None):
        if requested is None:  # here the GPU would be picked, and the numbers would change
            pytest.fail("the device was picked without the checkpoint's --device cpu")
        return real_pick(requested)

    monkeypatch.setattr(train_module, "pick_device", pick_device)
    common = dict(SMALL, data=str(write_corpus(tmp_path / "train.jsonl", 4)), max_steps=2, save_every=1)
    train(TrainingArgs(output_dir=str(tmp_path / "out"), **common), stop_after=1)
    resumed = train(TrainingArgs(output_dir=str(tmp_path / "out"), resume=True, tensorboard=False))
    assert resumed.resumed_from == 1 and resumed.steps == 2


def test_validation_best_adapter_and_additive_mode(tmp_path, tiny_model_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    write_corpus(folder / "train.jsonl", 8)
    write_corpus(folder / "val.jsonl", 3)
    out = tmp_path / "out"
    result = train(TrainingArgs(output_dir=str(out), data=str(folder), max_steps=4, save_every=2, save_best=True,
                                distrust_mode="additive", metrics_file=str(tmp_path / "m.jsonl"), **SMALL))
    assert result.normaliser is None and result.best_val_loss is not None
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    evals = [line for line in lines if line["kind"] == "eval"]
    assert [e["step"] for e in evals] == [2, 4]
    assert json.loads((out / "best" / "best.json").read_text())["val_loss"] == min(e["val_loss"] for e in evals)
    assert (out / "best" / "adapter_model.safetensors").is_file()


def test_save_best_without_validation_set_is_refused_before_writing(tmp_path, tiny_model_dir):
    data = write_corpus(tmp_path / "t.jsonl", 4)
    with pytest.raises(TrainingArgsError, match="--save-best needs a validation set"):
        train(TrainingArgs(output_dir=str(tmp_path / "out"), data=str(data), save_best=True, **SMALL))
    assert not (tmp_path / "out").exists()


def test_bad_data_fails_before_anything_is_written(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "w out of range", "auth_weight": 1.5, "prov_entropy": 2}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: auth_weight=1.5"):
        train(TrainingArgs(output_dir=str(tmp_path / "out"), data=str(data)))
    with pytest.raises(DataError, match=r"train.jsonl: file does not exist"):
        train(TrainingArgs(output_dir=str(tmp_path / "out"), data=str(tmp_path)))
    assert not (tmp_path / "out").exists()


def test_defaults_follow_the_model_size_the_device_and_the_data(tmp_path):
    from your_ai.train.defaults import RULES

    default = TrainingArgs(device="cpu").with_defaults()  # the demo corpus: 224 records
    small_cpu = RULES[("small", "cpu")]
    assert default.model == "smollm2-135m" and default.output_dir == str(Path("models") / "distrust-smollm2-135m")
    assert (default.batch_size, default.lora_rank, default.max_seq_length) == (
        small_cpu.batch_size, small_cpu.lora_rank, small_cpu.max_seq_length)
    assert default.max_steps == math.ceil(small_cpu.epochs * 224 / small_cpu.batch_size)
    assert default.warmup_steps == round(0.1 * default.max_steps)
    assert default.data.endswith("demo_corpus.jsonl") and default.eval_every == default.save_every

    data = tmp_path / "train.jsonl"
    data.write_text("".join(f'{{"text": "record {index}"}}\n' for index in range(400)))
    tiny = TrainingArgs(model="tiny", data=str(data), batch_size=8, grad_accum=2, device="cpu").with_defaults()
    assert tiny.max_steps == 25 and tiny.warmup_steps == 2  # 1 epoch of 400 records at 16 per step
    assert tiny.lora_rank == RULES[("demo", "cpu")].lora_rank
    assert TrainingArgs(model="tiny", data=str(write_corpus(tmp_path / "few.jsonl", 3))).with_defaults().max_steps == 10
    short = TrainingArgs(model="tiny", max_steps=10).with_defaults()
    assert short.warmup_steps == 1  # a fraction of the steps given, not a fixed count
    assert TrainingArgs(model="tiny", max_steps=1).with_defaults().warmup_steps == 0

    big = TrainingArgs(model="NousResearch/Hermes-2-Pro-Mistral-7B", max_steps=10, device="cpu").with_defaults()
    assert (big.lora_rank, big.learning_rate, big.warmup_steps, big.max_seq_length, big.max_steps) == (
        128, 5e-5, 1, 1024, 10)
    assert big.output_dir == str(Path("models") / "distrust-Hermes-2-Pro-Mistral-7B")
    assert TrainingArgs(model="llama-8b").with_defaults().output_dir.endswith("distrust-llama-8b")
    assert DEFAULTS["keep_last"] == 3 and big.save_every == 500


def test_the_run_says_where_its_defaults_came_from_and_warns_about_a_long_warmup(tmp_path, tiny_model_dir):
    data = write_corpus(tmp_path / "train.jsonl", 4)
    _, text = _run_text(TrainingArgs(output_dir=str(tmp_path / "out"), data=str(data), max_steps=2,
                                     warmup_steps=2, **SMALL))
    assert "defaults for a demo model" in text and "--learning-rate 0.001" in text
    assert "--warmup-steps 2 is not shorter than the run (2 steps)" in text


def _run_text(args):
    import io

    from rich.console import Console

    out = io.StringIO()
    result = train(args, console=Console(file=out, width=400))
    return result, out.getvalue()


def test_flag_checks():
    for bad, message in (
        (dict(batch_size=0), "--batch-size must be a whole number >= 1"),
        (dict(learning_rate=-1.0), "--learning-rate must be a positive number"),
        (dict(alpha=3.5), "--alpha"),
        (dict(lambda_weight=2.0), r"--lambda-weight must be in \[0, 1\]"),
        (dict(distrust_mode="both"), "--distrust-mode 'both'"),
        (dict(max_seq_length=1), "--max-seq-length"),
    ):
        with pytest.raises(TrainingArgsError, match=message):
            TrainingArgs(**bad).validate()
    TrainingArgs(distrust_mode="additive", lambda_weight=2.0).validate()


# ---------------------------------------------------------------------------- the output directory

def test_a_new_run_never_writes_into_a_directory_holding_something_else(tmp_path, tiny_model_dir):
    common = dict(SMALL, data=str(write_corpus(tmp_path / "train.jsonl", 4)), max_steps=2, save_every=1,
                  output_dir=str(tmp_path / "run"))
    train(TrainingArgs(**common))
    run = tmp_path / "run"
    adapter = (run / "adapter_model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match=r"already holds a training run \(finished 2 of 2 steps\); continue it "
                                            r"with --resume, start it over with --overwrite"):
        train(TrainingArgs(**common))
    # a finished run whose checkpoints were removed is still a run: refused, not overwritten
    import shutil

    shutil.rmtree(run / "checkpoints")
    (run / "best").mkdir()
    (run / "best" / "adapter_model.safetensors").write_bytes(b"stale")
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(TrainingArgs(**common))
    with pytest.raises(TrainingError, match="has no checkpoints; nothing to resume"):
        train(TrainingArgs(output_dir=str(run), resume=True))
    with pytest.raises(TrainingArgsError, match="--overwrite starts the run over and --resume continues it"):
        train(TrainingArgs(output_dir=str(run), resume=True, overwrite=True))
    assert (run / "adapter_model.safetensors").read_bytes() == adapter

    # --overwrite removes only what a run writes; anything else stops it before anything is removed
    (run / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match=r"--overwrite: .* also holds notes.txt, which training does not write"):
        train(TrainingArgs(overwrite=True, **common))
    assert (run / "best").is_dir() and (run / "adapter_model.safetensors").read_bytes() == adapter
    (run / "notes.txt").unlink()
    result = train(TrainingArgs(overwrite=True, **{**common, "max_steps": 3}))
    assert result.steps == 3 and any(note.startswith("--overwrite: removed the earlier run's") for note in result.notes)
    assert not (run / "best").exists()  # the earlier run's best/ would be stale
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 3]  # this run's metrics only (the first and the last step)
    assert json.loads((run / "training_summary.json").read_text())["steps"] == 3


def test_a_folder_that_is_not_a_run_is_refused_even_with_overwrite(tmp_path, tiny_model_dir):
    exported = tmp_path / "merged"
    exported.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (exported / name).write_text("{}")
    data = str(write_corpus(tmp_path / "train.jsonl", 4))
    for overwrite in (False, True):
        with pytest.raises(TrainingError, match=r"--output-dir .*merged is not empty and holds no training run "
                                                r"\(config.json, model.safetensors\)"):
            train(TrainingArgs(output_dir=str(exported), data=data, overwrite=overwrite, **SMALL))
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_resume_falls_back_past_a_damaged_checkpoint_and_keeps_it(tmp_path, tiny_model_dir):
    common = dict(SMALL, data=str(write_corpus(tmp_path / "train.jsonl", 4)), max_steps=5, save_every=2)
    run = tmp_path / "run"
    train(TrainingArgs(output_dir=str(run), **common), stop_after=4)
    damaged = run / "checkpoints" / "step-000004" / "adapter_model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])

    resumed = train(TrainingArgs(output_dir=str(run), resume=True, tensorboard=False))
    assert resumed.resumed_from == 2 and resumed.steps == 5
    assert any("step-000004 cannot be loaded" in note and "renamed step-000004.damaged" in note
               for note in resumed.notes)
    assert (run / "checkpoints" / "step-000004.damaged" / "adapter_model.safetensors").stat().st_size == 100
    assert [p.name for p in sorted((run / "checkpoints").glob("step-*"))] == [
        "step-000002", "step-000004", "step-000004.damaged", "step-000005"]

    # all done: --resume says so and changes nothing
    before = (run / "adapter_model.safetensors").stat().st_mtime_ns
    again = train(TrainingArgs(output_dir=str(run), resume=True))
    assert again.already_finished and again.steps == again.max_steps == 5
    assert (run / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_lora_rank_above_the_adapted_dimensions_is_refused_before_loading(tmp_path, tiny_model_dir):
    from your_ai.model.architecture import Architecture
    from your_ai.model.lora import smallest_adapted_dimension

    data = str(write_corpus(tmp_path / "train.jsonl", 4))
    with pytest.raises(TrainingArgsError, match=r"^--lora-rank 20000 is larger than the smallest adapted dimension "
                                                r"\(k_proj out 128 of model tiny\); use at most 128$"):
        train(TrainingArgs(output_dir=str(tmp_path / "out"), data=data, **{**SMALL, "lora_rank": 20000}))
    assert not (tmp_path / "out").exists()
    wide_heads = Architecture("llama", 2048, 5632, 2, 16, 4, 1000, 256, head_dim=256)
    assert smallest_adapted_dimension(wide_heads) == ("k_proj out", 1024)
    assert smallest_adapted_dimension(wide_heads, ("q_proj", "o_proj")) == ("q_proj in", 2048)
