"""Checkpoints: safetensors + JSON round trips, atomic writes, latest / keep-last, the final adapter."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from your_ai.model.lora import LoraSettings
from your_ai.train.checkpoints import (
    load_adapter_weights,
    load_training_state,
    optimizer_state_from_files,
    optimizer_state_to_files,
    prune_checkpoints,
    rng_state,
    save_adapter,
    save_checkpoint,
    set_rng_state,
    write_directory_atomically,
)
from your_ai.train.outputs import (
    CheckpointError,
    find_resumable_checkpoint,
    list_checkpoints,
    remove_stale_temporaries,
    verify_checkpoint,
)
from your_ai.train.setup import build_optimizer, load_for_training


def _stepped_optimizer(model, seed: int):
    optimizer = build_optimizer(model, 1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(2):
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


@pytest.fixture
def lora_model(tiny_model_dir):
    return load_for_training("tiny", LoraSettings(rank=2, layers=2), "cpu")


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path, lora_model):
    optimizer, _ = _stepped_optimizer(lora_model.model, seed=1)
    tensors, meta = optimizer_state_to_files(optimizer.state_dict())
    save_file(tensors, tmp_path / "o.safetensors")
    (tmp_path / "o.json").write_text(json.dumps(meta))
    restored = optimizer_state_from_files(load_file(tmp_path / "o.safetensors"), json.loads((tmp_path / "o.json").read_text()))

    fresh = build_optimizer(lora_model.model, 5.0)
    fresh.load_state_dict(restored)
    original, loaded = optimizer.state_dict(), fresh.state_dict()
    assert loaded["param_groups"] == original["param_groups"]
    for index, values in original["state"].items():
        for key, value in values.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)


def test_rng_state_round_trip():
    tensors, meta = rng_state()
    expected = (torch.rand(3), random.random())
    set_rng_state(tensors, json.loads(json.dumps(meta)))
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_checkpoint_restores_adapter_optimizer_and_scheduler(tmp_path, lora_model, tiny_model_dir):
    model = lora_model.model
    optimizer, scheduler = _stepped_optimizer(model, seed=2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    path = save_checkpoint(tmp_path, 2, model=model, optimizer=optimizer, scheduler=scheduler,
                           trainer_state={"position": {"epoch": 1, "index": 3}}, base_model="tiny", keep_last=3)
    assert path.name == "step-000002" and (tmp_path / "checkpoints" / "latest").read_text().strip() == path.name
    assert {p.name for p in path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                                                "optimizer.json", "rng.safetensors", "trainer_state.json"}
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))

    other = load_for_training("tiny", LoraSettings(rank=2, layers=2), "cpu").model
    other_optimizer = build_optimizer(other, 1e-3)
    other_scheduler = torch.optim.lr_scheduler.LambdaLR(other_optimizer, lambda step: 1.0 / (1 + step))
    load_adapter_weights(other, path)
    state = load_training_state(path, optimizer=other_optimizer, scheduler=other_scheduler)
    assert state["step"] == 2 and state["position"] == {"epoch": 1, "index": 3}
    for (name, a), (_, b) in zip(model.named_parameters(), other.named_parameters()):
        if a.requires_grad:
            assert torch.equal(a, b), name
    assert other_scheduler.last_epoch == scheduler.last_epoch == 2
    assert other_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]

    (path / "optimizer.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete or damaged"):
        load_training_state(path, optimizer=other_optimizer, scheduler=other_scheduler)


def test_latest_ignores_killed_writes_and_keep_last_prunes(tmp_path, lora_model):
    model = lora_model.model
    optimizer, scheduler = _stepped_optimizer(model, seed=3)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler,
                        trainer_state={}, base_model="tiny", keep_last=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    # a write killed before its rename leaves a hidden temporary directory
    dead = tmp_path / "checkpoints" / ".tmp-step-000009-abcd"
    dead.mkdir()
    (dead / "trainer_state.json").write_text("{")
    assert find_resumable_checkpoint(tmp_path).checkpoint.name == "step-000003"
    # a missing or stale marker falls back to the newest complete checkpoint
    (tmp_path / "checkpoints" / "latest").write_text("step-000042\n")
    assert find_resumable_checkpoint(tmp_path).checkpoint.name == "step-000003"
    assert remove_stale_temporaries(tmp_path) == [dead] and not dead.exists()


def test_atomic_directory_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "best"
    write_directory_atomically(target, lambda d: (d / "a.txt").write_text("first"))

    def broken(directory):
        (directory / "a.txt").write_text("second")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_directory_atomically(target, broken)
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_final_adapter_loads_with_peft_and_names_its_base(tmp_path, lora_model):
    from peft import PeftModel

    from your_ai.model.load import load_model
    from your_ai.model.resolve import resolve_model

    with torch.no_grad():
        for name, p in lora_model.model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.25)
    save_adapter(lora_model.model, tmp_path, base_model="tiny", tokenizer=lora_model.tokenizer)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny" and config["r"] == 2
    assert (tmp_path / "tokenizer.json").is_file() and not list(tmp_path.glob(".tmp-*"))
    loaded = PeftModel.from_pretrained(load_model(resolve_model(config["base_model_name_or_path"])), tmp_path)
    weights = {n: p for n, p in loaded.named_parameters() if "lora_B" in n}
    assert weights and all(torch.all(p == 0.25) for p in weights.values())


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_newest_checkpoint_is_skipped_and_never_pruned_past(tmp_path, lora_model):
    model = lora_model.model
    optimizer, scheduler = _stepped_optimizer(model, seed=4)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler,
                        trainer_state={"args": {}}, base_model="tiny", keep_last=3)
    folder = tmp_path / "checkpoints"
    _truncate(folder / "step-000003" / "adapter_model.safetensors")
    (folder / "step-000002" / "trainer_state.json").write_text('{"step": 2')  # cut short
    with pytest.raises(CheckpointError, match="step-000003/adapter_model.safetensors: .*incomplete"):
        verify_checkpoint(folder / "step-000003")

    point = find_resumable_checkpoint(tmp_path)
    assert point.checkpoint == folder / "step-000001"
    assert [path.name for path, _ in point.damaged] == ["step-000003", "step-000002"]
    assert any("step-000003 cannot be loaded" in note for note in point.notes)
    assert (folder / "step-000003" / "adapter_model.safetensors").is_file()  # found, not deleted

    # keep-last 2 would keep the two damaged ones and delete the only checkpoint that loads
    assert prune_checkpoints(tmp_path, 2) == []
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 2, 3]


def test_latest_marker_never_leads_outside_the_run(tmp_path, lora_model):
    model = lora_model.model
    optimizer, scheduler = _stepped_optimizer(model, seed=5)
    run, other = tmp_path / "run", tmp_path / "other"
    save_checkpoint(run, 1, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={},
                    base_model="tiny", keep_last=3)
    save_checkpoint(other, 9, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={},
                    base_model="tiny", keep_last=3)
    marker = run / "checkpoints" / "latest"
    for outside in ("../../other/checkpoints/step-000009", str(other / "checkpoints" / "step-000009")):
        marker.write_text(outside + "\n")
        point = find_resumable_checkpoint(run)
        assert point.checkpoint == run / "checkpoints" / "step-000001"
        assert point.notes == [f"{marker} names {outside!r}, not a checkpoint of this run; ignored"]
