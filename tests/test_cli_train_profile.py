"""`train --profile` / `--auto-optimize` apply a hardware profile saved by `optimize`."""

import json
import os
import subprocess
import sys

from your_ai.fit.profiles import apply_profile, profile_path

PROFILE = {"model": "tiny", "batch_size": 2, "lora_rank": 4, "lora_alpha": 8, "lora_layers": 2, "seq_length": 32}


def run_train(tmp_path, *flags, env=None):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"Record {i} of a lab notebook, 19{i}0.", "auth_weight": 0.1 * i,
                                         "prov_entropy": 1.0 + i}) + "\n" for i in range(4)))
    command = [sys.executable, "-m", "your_ai", "train", "--model", "tiny", "--data", str(data), "--max-steps", "2",
               "--output-dir", str(tmp_path / "out"), "--no-tensorboard", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_profile_is_applied_and_flags_win():
    options = {"model": None, "batch_size": None, "lora_rank": 8, "lora_alpha": None, "lora_layers": None,
               "max_seq_length": None}
    applied, note = apply_profile(options, PROFILE, "p.json")
    assert applied == {"model": "tiny", "batch_size": 2, "lora_rank": 8, "lora_alpha": 8, "lora_layers": 2,
                       "max_seq_length": 32}
    assert "p.json" in note and "lora-rank" not in note


def test_profile_for_another_model_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="profile is for model 'tiny', not 'llama-8b'"):
        apply_profile({"model": "llama-8b"}, PROFILE, "p.json")


def test_train_profile_flag_through_the_cli(tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(PROFILE))
    result = run_train(tmp_path, "--profile", str(profile))
    assert result.returncode == 0, result.stderr
    assert f"Applied hardware profile {profile}" in result.stdout
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8


def test_auto_optimize_uses_the_saved_profile(tmp_path):
    config = tmp_path / "config"
    env = {"YOUR_AI_CONFIG_DIR": str(config)}
    target = config / "profiles" / "tiny.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({**PROFILE, "lora_rank": 2, "lora_alpha": 4}))
    result = run_train(tmp_path, "--auto-optimize", env=env)
    assert result.returncode == 0, result.stderr
    assert "Applied hardware profile" in result.stdout
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 2


def test_bad_profile_names_the_file(tmp_path):
    profile = tmp_path / "broken.json"
    profile.write_text('{"model": "tiny", "batch_size": 0, "lora_rank": 4, "lora_alpha": 8, "lora_layers": 2}')
    result = run_train(tmp_path, "--profile", str(profile))
    assert result.returncode == 1
    assert f"{profile}: batch_size=0 must be a positive integer" in result.stderr
    assert not (tmp_path / "out").exists()


def test_profile_path_is_per_model(tmp_path, monkeypatch):
    monkeypatch.setenv("YOUR_AI_CONFIG_DIR", str(tmp_path))
    assert profile_path("tiny") == tmp_path / "profiles" / "tiny.json"
    assert profile_path("org/name") == tmp_path / "profiles" / "org--name.json"


def test_settings_the_profile_was_not_measured_with_are_named():
    from your_ai.fit.profiles import settings_differences

    assert settings_differences(PROFILE, {"max_seq_length": None, "quantize": None, "dora": None}) == []
    assert settings_differences(PROFILE, {"max_seq_length": 32, "quantize": None, "dora": False}) == []
    assert settings_differences(PROFILE, {"max_seq_length": 64, "quantize": 4, "dora": True}) == [
        "--max-seq-length 32 (this run: 64)", "full-precision weights (this run: --quantize 4)",
        "LoRA adapters (this run: DoRA)"]
    _, note = apply_profile({"model": "tiny", "max_seq_length": 64}, PROFILE, "p.json")
    assert note.splitlines()[1].startswith("The profile was measured with --max-seq-length 32 (this run: 64): "
                                           "what fitted there may not fit this run")


def test_auto_optimize_measures_again_when_the_saved_profile_had_other_settings(monkeypatch, tmp_path):
    from your_ai.fit import sweep

    monkeypatch.setenv("YOUR_AI_CONFIG_DIR", str(tmp_path))
    target = profile_path("tiny")
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(PROFILE))
    swept, said = [], []
    monkeypatch.setattr(sweep, "run_optimize", lambda model, **options: swept.append(options) or {
        "profile": {**PROFILE, "seq_length": options["seq_length"]}, "path": str(target)})
    same = sweep.profile_for_training("tiny", profile=None, auto=True, max_memory_gb=None, device="cpu",
                                      say=said.append, engine="torch", run={"max_seq_length": 32})
    assert same == (PROFILE, str(target)) and swept == []  # measured with this run's settings: reused
    longer = sweep.profile_for_training("tiny", profile=None, auto=True, max_memory_gb=None, device="cpu",
                                        say=said.append, engine="torch", run={"max_seq_length": 64, "dora": True})
    assert longer[0]["seq_length"] == 64
    assert (swept[0]["seq_length"], swept[0]["dora"], swept[0]["quick"]) == (64, True, True)
    assert said == [f"The hardware profile {target} was measured with --max-seq-length 32 (this run: 64); LoRA "
                    "adapters (this run: DoRA): running the quick optimize sweep for this run's settings."]
