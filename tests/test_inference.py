"""Loading a base model with a LoRA adapter, generating, scoring text and merging (in-process)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from your_ai.data.records import check_record
from your_ai.eval import inference, likelihood
from your_ai.eval.export import merge_adapter
from your_ai.eval.inference import InferenceError
from your_ai.model.errors import ModelNotAvailableError


def make_adapter(directory: Path, base_name: str = "tiny", seed: int = 1, model: str = "tiny") -> Path:
    """A real PEFT adapter folder for ``model`` (the tiny model) whose LoRA B weights are non-zero, so it
    changes the model's outputs; ``adapter_config.json`` names ``base_name`` as its base."""
    from your_ai.model.load import load_model, load_tokenizer
    from your_ai.model.lora import LoraSettings, apply_lora
    from your_ai.model.resolve import resolve_model

    resolved = resolve_model(model)
    model, _ = apply_lora(load_model(resolved), LoraSettings(rank=8, layers=2))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.peft_config["default"].base_model_name_or_path = base_name
    model.save_pretrained(directory)
    load_tokenizer(resolved).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_adapter(tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def tuned(adapter_dir):
    return inference.load_for_inference(checkpoint=adapter_dir)


def record(value: dict, line: int):
    return check_record(value, "data.jsonl", line)


# ---------------------------------------------------------------------------- loading

def test_checkpoint_alone_finds_its_base_model_and_changes_outputs(tuned, adapter_dir):
    from peft import PeftModel

    assert isinstance(tuned.model, PeftModel)
    assert tuned.base_name == "tiny" and tuned.checkpoint == adapter_dir.resolve() and tuned.device == "cpu"
    assert not tuned.model.training
    ids = torch.tensor([[0, 40, 41, 42, 300]])
    with torch.no_grad():
        adapted = tuned.model(input_ids=ids).logits
        with tuned.model.disable_adapter():
            base = tuned.model(input_ids=ids).logits
    assert (adapted - base).abs().max() > 1e-3


def test_tiny_model_without_checkpoint(tiny_model_dir):
    im = inference.load_for_inference("tiny")
    assert im.base_name == "tiny" and im.checkpoint is None and not im.has_adapter
    assert im.model.config.num_hidden_layers == 4


def test_base_model_named_by_hub_id_comes_from_the_cache(adapter_dir, hub_cache, tmp_path):
    moved = tmp_path / "adapter"
    shutil.copytree(adapter_dir, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/tiny-copy"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotAvailableError, match="hf download someone/tiny-copy"):
        inference.load_for_inference(checkpoint=moved)
    config["base_model_name_or_path"] = str(tmp_path / "moved-model")  # a model folder that has moved
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotAvailableError, match=r"moved-model' does not exist \(the base model "
                       rf"{moved}/adapter_config.json names\); if it is elsewhere now, pass --model"):
        inference.load_for_inference(checkpoint=moved)
    config["base_model_name_or_path"] = "someone/tiny-copy"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    hub_cache.add("someone/tiny-copy")
    im = inference.load_for_inference(checkpoint=moved)
    assert im.base_name == "someone/tiny-copy" and im.has_adapter


def test_bad_checkpoint_folders_are_named_with_the_missing_file(adapter_dir, tmp_path):
    with pytest.raises(InferenceError, match=r"'.*nowhere' does not exist"):
        inference.load_for_inference(checkpoint=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InferenceError, match=rf"{empty}'.* no adapter_config\.json"):
        inference.load_for_inference(checkpoint=empty)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(adapter_dir / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(InferenceError, match="adapter_model.bin .*never loaded"):
        inference.load_for_inference(checkpoint=pickled)
    nameless = tmp_path / "nameless"
    shutil.copytree(adapter_dir, nameless)
    config = json.loads((nameless / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (nameless / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InferenceError, match="does not name its base model.*--model"):
        inference.load_for_inference(checkpoint=nameless)
    assert inference.load_for_inference(model="tiny", checkpoint=nameless).has_adapter
    config["peft_type"] = "NO_SUCH_METHOD"  # a damaged config is the file's fault, not the base model's
    (nameless / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InferenceError, match=rf"^{nameless}/adapter_config.json: a value PEFT cannot use "
                       r"\('NO_SUCH_METHOD'\); restore the file"):
        inference.load_for_inference(model="tiny", checkpoint=nameless)


def test_an_adapter_on_a_base_of_another_shape_is_refused(adapter_dir, tmp_path):
    from your_ai.model.architecture import Architecture, build_random_model
    from your_ai.model.presets import TINY

    wider = Architecture("llama", 128, 344, 4, 4, 2, 2048, 1024, rope_theta=10000.0)
    other = tmp_path / "other-model"
    build_random_model(wider, extra_config={"pad_token_id": 2}).save_pretrained(other)
    assert wider.hidden_size != TINY.architecture.hidden_size
    with pytest.raises(InferenceError, match=rf"adapter in {adapter_dir.resolve()} does not fit the base model.*"
                       r"torch.Size\(\[\d+, \d+\]\); pass --model with the base model it was trained on$"):
        inference.load_for_inference(model=str(other), checkpoint=adapter_dir)


# ---------------------------------------------------------------------------- generation

def test_greedy_and_seeded_generation_are_repeatable(tuned):
    greedy = inference.generate(tuned, "The bridge was", max_tokens=8, temperature=0)
    assert greedy and greedy == inference.generate(tuned, "The bridge was", max_tokens=8, temperature=0)
    assert greedy.startswith(inference.generate(tuned, "The bridge was", max_tokens=3, temperature=0))
    assert len(greedy) > len(inference.generate(tuned, "The bridge was", max_tokens=3, temperature=0))
    first = inference.generate(tuned, "The bridge was", max_tokens=12, temperature=1.0, seed=7)
    assert first == inference.generate(tuned, "The bridge was", max_tokens=12, temperature=1.0, seed=7)
    samples = {inference.generate(tuned, "The bridge was", max_tokens=12, temperature=1.0, seed=s) for s in range(4)}
    assert len(samples) > 1


def test_a_prompt_goes_through_the_chat_template_unless_raw(tuned):
    tokenizer = tuned.tokenizer
    assert tokenizer.chat_template  # the tiny model's tokenizer has one
    templated = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                              add_generation_prompt=True)
    assert templated.startswith("<|user|>\nhello")
    ids = inference.prompt_token_ids(tokenizer, "hello")
    assert ids == inference.prompt_token_ids(tokenizer, "hello", chat=True)
    assert ids == tokenizer(templated, add_special_tokens=False).input_ids
    assert inference.prompt_token_ids(tokenizer, "hello", chat=False) == tokenizer("hello").input_ids
    default = inference.generate(tuned, "hello", max_tokens=6, temperature=0)
    assert default == inference.generate(tuned, "hello", max_tokens=6, temperature=0, chat=True)
    assert default != inference.generate(tuned, "hello", max_tokens=6, temperature=0, chat=False)


def test_a_tokenizer_without_a_chat_template_sends_plain_text(tuned):
    import copy

    plain = copy.deepcopy(tuned.tokenizer)
    plain.chat_template = None
    assert inference.prompt_token_ids(plain, "hello") == plain("hello").input_ids
    assert not inference.uses_chat_template(plain)
    with pytest.raises(InferenceError, match="no chat template; leave out --chat"):
        inference.prompt_token_ids(plain, "hello", chat=True)
    assert inference.empty_answer_hint(plain, None, 0.7) == (
        "(empty answer: the model ended at once; try a higher --temperature)")
    assert inference.empty_answer_hint(tuned.tokenizer, False, 0) == (
        "(empty answer: the model ended at once; try without --raw / --temperature 0.7)")


def test_a_row_that_ends_leaves_the_batch_and_the_others_go_on(adapter_dir):
    im = inference.load_for_inference(checkpoint=adapter_dir)
    prompts = ["The bridge was", "hello", "Who decides what is true?"]
    encoded = [inference.prompt_token_ids(im.tokenizer, p) for p in prompts]
    answers = inference._decode(im, encoded, 8, 0.0)
    assert [len(a) for a in answers] == [8, 8, 8]
    cut = next(i for i in range(1, 8) if answers[0][i] not in answers[0][:i])
    end = answers[0][cut]  # a token of the first answer, new at position cut, becomes an end token
    im.model.generation_config.eos_token_id = [end]
    ended = inference._decode(im, encoded, 8, 0.0)
    assert ended[0] == answers[0][:cut]  # the answer stops before its end token
    for before, after in zip(answers[1:], ended[1:]):  # the other rows go on as they would alone
        assert after == (before[:before.index(end)] if end in before else before)
    batched = inference.generate_batch(im, prompts, max_tokens=8, temperature=0, batch_size=3)
    assert batched == [inference.generate(im, p, max_tokens=8, temperature=0) for p in prompts]
    assert batched[0] == im.tokenizer.decode(answers[0][:cut], skip_special_tokens=True)


def test_compare_switches_the_adapter_off_for_the_base_output(tuned):
    result = inference.compare(tuned, "The bridge was", max_tokens=8, temperature=0)
    with tuned.model.disable_adapter():
        base = inference.generate(tuned, "The bridge was", max_tokens=8, temperature=0)
    assert result.base == base
    assert result.fine_tuned == inference.generate(tuned, "The bridge was", max_tokens=8, temperature=0)
    assert result.base != result.fine_tuned
    sampled = inference.compare(tuned, "The bridge was", max_tokens=6, temperature=0.9)
    assert sampled.seed is not None
    assert sampled.fine_tuned == inference.generate(tuned, "The bridge was", 6, 0.9, sampled.seed)


def test_compare_needs_an_adapter(tiny_model_dir):
    with pytest.raises(InferenceError, match="--checkpoint"):
        inference.compare(inference.load_for_inference("tiny"), "hi", max_tokens=2)


# ---------------------------------------------------------------------------- scoring

def _manual_logprob(im, ids: list[int], start: int) -> float:
    with torch.no_grad():
        logits = im.model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[i - 1, ids[i]]) for i in range(start, len(ids)))


def test_sequence_logprob_is_the_sum_over_continuation_tokens(tuned):
    context, continuation = "The bridge was completed in", " 1931 and carried 40 tonnes"
    context_ids = tuned.tokenizer(context).input_ids
    continuation_ids = tuned.tokenizer(continuation, add_special_tokens=False).input_ids
    expected = _manual_logprob(tuned, context_ids + continuation_ids, len(context_ids))
    assert likelihood.sequence_logprob(tuned, context, continuation) == pytest.approx(expected, abs=1e-3)
    pairs = [(context, continuation), ("A", " b"), ("The bridge", " was long and old and grey")]
    batched = likelihood.sequence_logprobs(tuned, pairs, batch_size=3)
    single = [likelihood.sequence_logprob(tuned, c, x) for c, x in pairs]
    assert batched == pytest.approx(single, abs=1e-3)
    assert all(value < 0 for value in batched)
    with pytest.raises(ValueError, match="no tokens"):
        likelihood.sequence_logprob(tuned, "A", "")


def test_evaluate_is_token_weighted_and_independent_of_batching(tuned):
    records = [
        record({"text": "The bridge was completed in 1931."}, 1),
        record({"prompt": "When was the bridge completed?", "completion": " In 1931."}, 2),
        record({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}, 4),
        record({"text": "A much longer document about bridges, tonnes, years and the people who built them."}, 5),
    ]
    one = likelihood.evaluate_records(tuned, records, batch_size=1)
    many = likelihood.evaluate_records(tuned, records, batch_size=3)
    assert [r.line for r in one.records] == [1, 2, 4, 5]
    assert [r.tokens for r in one.records] == [r.tokens for r in many.records]
    assert many.cross_entropy == pytest.approx(one.cross_entropy, abs=1e-4)
    weighted = sum(r.cross_entropy * r.tokens for r in one.records) / sum(r.tokens for r in one.records)
    assert one.cross_entropy == pytest.approx(weighted)
    assert one.token_count == sum(r.tokens for r in one.records) and one.record_count == 4
    assert one.perplexity == pytest.approx(math.exp(one.cross_entropy))
    # the text record: every token after the first is a target, plus the end-of-sequence token
    text_ids = tuned.tokenizer("The bridge was completed in 1931.").input_ids + [tuned.tokenizer.eos_token_id]
    assert one.records[0].tokens == len(text_ids) - 1
    manual = -_manual_logprob(tuned, text_ids, 1) / (len(text_ids) - 1)
    assert one.records[0].cross_entropy == pytest.approx(manual, abs=1e-4)
    # the prompt/completion record: only the completion and the end-of-sequence token
    completion = tuned.tokenizer(" In 1931.", add_special_tokens=False).input_ids
    assert one.records[1].tokens == len(completion) + 1


def test_evaluate_truncates_and_reports_records_left_without_targets(tuned):
    records = [
        record({"prompt": "A prompt that is longer than the window", "completion": " answer"}, 1),
        record({"text": "Short text here"}, 2),
    ]
    result = likelihood.evaluate_records(tuned, records, max_seq_length=4)
    assert result.records[0].tokens == 0 and result.records[0].cross_entropy is None
    assert result.records[1].tokens == 3
    assert result.token_count == 3 and result.cross_entropy == pytest.approx(result.records[1].cross_entropy)
    with pytest.raises(InferenceError, match="no record has a token"):
        likelihood.evaluate_records(tuned, records[:1], max_seq_length=4)


# ---------------------------------------------------------------------------- export

def test_export_refuses_to_overwrite_and_never_leaves_a_partial_folder(adapter_dir, tmp_path):
    output = tmp_path / "merged"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(InferenceError, match="not empty; pass --force"):
        merge_adapter(adapter_dir, output)
    assert (output / "keep.txt").read_text() == "mine"
    with pytest.raises(InferenceError, match="overlaps the checkpoint"):
        merge_adapter(adapter_dir, adapter_dir, force=True)
    with pytest.raises(InferenceError, match="keep.txt' exists and is not a directory; give a folder's path"):
        merge_adapter(adapter_dir, output / "keep.txt", force=True)
    path = merge_adapter(adapter_dir, output, force=True)
    assert path == output.resolve()
    assert (output / "model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    assert not (output / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no staging folder left behind


def test_export_refuses_an_output_over_the_base_models_own_folder_or_file(adapter_dir, tiny_model_dir, tmp_path):
    """--force never replaces what the export reads: the base model given with --model, or recorded in the
    adapter, as a folder, a folder holding it, or a GGUF file."""
    from your_ai.eval.export import export_gguf

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    before = sorted(p.name for p in base.iterdir())
    for output in (base, tmp_path):
        with pytest.raises(InferenceError, match=f"overlaps the base model '{base}'; choose an --output outside"):
            merge_adapter(adapter_dir, output, model=str(base), force=True)
    recorded = tmp_path / "adapter"
    shutil.copytree(adapter_dir, recorded)
    config = json.loads((recorded / "adapter_config.json").read_text())
    (recorded / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    with pytest.raises(InferenceError, match="overlaps the base model"):
        merge_adapter(recorded, base, force=True)
    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(InferenceError, match=f"overlaps the base model '{gguf}'"):
        export_gguf(adapter_dir, gguf, "q8_0", model=str(gguf), force=True)
    assert sorted(p.name for p in base.iterdir()) == before and gguf.read_bytes() == b"GGUF"


def test_export_removes_what_a_killed_export_left_and_keeps_a_running_ones(adapter_dir, tmp_path):
    import socket
    import subprocess

    finished = subprocess.Popen(["true"])
    finished.wait()  # a pid no process has now: the export that was killed
    host = socket.gethostname()
    killed = tmp_path / f".merged.{host}-{finished.pid}.abc123"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    killed_file = tmp_path / f".merged.{host}-{finished.pid}.def456.tmp"
    killed_file.write_bytes(b"half")
    running = tmp_path / f".merged.{host}-{os.getpid()}.ghi789"  # this process: still writing
    other_host = tmp_path / f".merged.elsewhere-{finished.pid}.jkl012"  # cannot be told from here
    running.mkdir()
    other_host.mkdir()
    merge_adapter(adapter_dir, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["merged", running.name, other_host.name])
