"""Model resolution against a real hub cache layout, the tiny model, and random models of preset shapes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hub_cache import fake_commit

from your_ai.model.architecture import build_config, build_random_model
from your_ai.model.errors import (
    InvalidModelNameError,
    ModelFileError,
    ModelNotAvailableError,
    ModelResolutionError,
)
from your_ai.model.load import load_model, load_tokenizer, weight_files
from your_ai.model.presets import BENCHMARK_PRESETS, PRESETS, TINY, get_preset
from your_ai.model.resolve import cached_causal_lms, model_shape, resolve_model

HUB_ID = "NousResearch/Hermes-2-Pro-Mistral-7B"


def test_fixture_is_accepted_by_huggingface_hub(hub_cache):
    from huggingface_hub import scan_cache_dir

    hub_cache.add(HUB_ID, commit=fake_commit("old"), set_main=False)
    hub_cache.add(HUB_ID, commit=fake_commit("new"))
    info = scan_cache_dir(hub_cache.path)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == HUB_ID
    assert {revision.commit_hash for revision in repo.revisions} == {fake_commit("old"), fake_commit("new")}
    assert any("main" in revision.refs for revision in repo.revisions)


@pytest.mark.parametrize("main_is", ["first", "second"])
def test_resolution_follows_refs_main_not_the_first_snapshot(hub_cache, main_is):
    commits = [fake_commit("a"), fake_commit("b")]
    hub_cache.add(HUB_ID, commit=commits[0], set_main=(main_is == "first"))
    hub_cache.add(HUB_ID, commit=commits[1], set_main=(main_is == "second"))
    if main_is == "first":  # adding the second snapshot must not move main
        (hub_cache.path / f"models--{HUB_ID.replace('/', '--')}" / "refs" / "main").write_text(commits[0])
    expected = commits[0] if main_is == "first" else commits[1]
    for name in ("hermes-mistral-7b", HUB_ID):
        resolved = resolve_model(name)
        assert resolved.path.name == expected
        assert resolved.source == "hub-cache"
        assert resolved.hub_id == HUB_ID
        assert resolved.preset is PRESETS["hermes-mistral-7b"]


def test_missing_model_says_not_available_with_the_download_command(hub_cache):
    with pytest.raises(ModelNotAvailableError) as error:
        resolve_model("hermes-mistral-7b")
    message = str(error.value)
    assert "not available locally" in message
    assert f"hf download {HUB_ID}" in message
    assert error.value.download_command == f"hf download {HUB_ID}"
    assert "OOM" not in message


def test_unknown_hub_id_is_not_available(hub_cache):
    with pytest.raises(ModelNotAvailableError, match="hf download some-org/some-model"):
        resolve_model("some-org/some-model")


def test_partial_download_is_reported(hub_cache, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "tokenizer.json").write_text("{}")
    hub_cache.add(HUB_ID, source=partial)
    with pytest.raises(ModelNotAvailableError, match="partly downloaded"):
        resolve_model(HUB_ID)


def test_hf_home_is_honoured(tmp_path, monkeypatch, tiny_model_dir):
    from hub_cache import add_snapshot

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    add_snapshot(tmp_path / "home" / "hub", HUB_ID, tiny_model_dir, fake_commit("x"))
    assert resolve_model(HUB_ID).path.name == fake_commit("x")


def test_local_directory(tiny_model_dir, tmp_path):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.source == "local"
    assert resolved.path == tiny_model_dir.resolve()
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModelNameError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.parametrize("name", ["", "not a model", "a/b/c", "org/na me"])
def test_invalid_names_are_rejected(name):
    with pytest.raises(InvalidModelNameError):
        resolve_model(name)


def test_tiny_preset_is_builtin_and_loads(tiny_model_dir):
    resolved = resolve_model("tiny")
    assert resolved.source == "builtin"
    assert resolved.path == tiny_model_dir
    model = load_model(resolved)
    tokenizer = load_tokenizer(resolved)
    parameters = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < parameters < 10_000_000
    assert parameters == TINY.architecture.parameter_count()
    assert model.config.model_type == "llama"
    assert tokenizer.pad_token is not None
    ids = tokenizer("A 1923 patent for a radio valve").input_ids
    assert max(ids) < TINY.architecture.vocab_size
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_tiny_weights_are_reproducible(tiny_model_dir):
    import torch

    from your_ai.model.resolve import _tiny_token_ids, tiny_assets_dir

    again = build_random_model(TINY.architecture, seed=0, extra_config=_tiny_token_ids(tiny_assets_dir()))
    saved = load_model(resolve_model("tiny")).state_dict()
    rebuilt = again.state_dict()
    assert saved.keys() == rebuilt.keys()
    assert all(torch.equal(saved[name], rebuilt[name]) for name in saved)


@pytest.mark.parametrize("preset", [p.name for p in BENCHMARK_PRESETS] + ["r1-distill-32b"])
def test_preset_architectures_build_exact_shapes(preset):
    import torch
    from transformers import AutoModelForCausalLM

    architecture = get_preset(preset).architecture
    config = build_config(architecture)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == architecture.parameter_count()
    assert config.num_hidden_layers == architecture.num_hidden_layers
    assert config.vocab_size == architecture.vocab_size


def test_known_parameter_counts():
    billions = {name: PRESETS[name].architecture.parameter_count() / 1e9 for name in PRESETS if name != "tiny"}
    assert billions["hermes-mistral-7b"] == pytest.approx(7.24, abs=0.01)
    assert billions["llama-8b"] == pytest.approx(8.03, abs=0.01)
    assert billions["r1-distill-14b"] == pytest.approx(14.77, abs=0.01)
    assert billions["r1-distill-32b"] == pytest.approx(32.76, abs=0.01)
    assert billions["hermes-70b"] == pytest.approx(70.55, abs=0.01)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match="hermes-mistral-7b"):
        get_preset("gpt-5")


def test_model_code_is_never_run_without_the_flag(tmp_path, tiny_model_dir):
    import shutil

    model_dir = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    code = (
        "from your_ai.model.load import load_model\nfrom your_ai.model.resolve import resolve_model\n"
        f"load_model(resolve_model({str(model_dir)!r}))\n"
    )
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert not (tmp_path / "ran").exists()


def test_weight_files_follow_the_index_and_name_what_is_missing(tmp_path):
    with pytest.raises(ModelResolutionError, match=f"{tmp_path}: no model.safetensors"):
        weight_files(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "b-2.safetensors", "c": "b-1.safetensors"}}')
    with pytest.raises(ModelResolutionError, match="b-1.safetensors: missing"):
        weight_files(tmp_path)
    import torch
    from safetensors.torch import save_file

    for name in ("a", "c"):
        save_file({name: torch.zeros(64)}, tmp_path / ("b-2.safetensors" if name == "a" else "b-1.safetensors"))
    assert weight_files(tmp_path) == [tmp_path / "b-1.safetensors", tmp_path / "b-2.safetensors"]
    shard = tmp_path / "b-2.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])  # a download cut short
    with pytest.raises(ModelResolutionError, match=f"{shard}: not a complete safetensors file"):
        weight_files(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ModelResolutionError, match="model.safetensors.index.json: not a safetensors index"):
        weight_files(tmp_path)


def config_only(tmp_path, name, config) -> "Path":
    """A directory holding only a config.json (``config``: a dict, or the file's text)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def test_shape_of_any_model_without_its_weights(hub_cache, tiny_model_dir, tmp_path):
    hub_cache.add("someone/tiny-chat")
    by_hub_id = model_shape("someone/tiny-chat")
    assert by_hub_id.architecture.parameter_count() == TINY.architecture.parameter_count()
    assert (by_hub_id.label, by_hub_id.params, by_hub_id.preset) == ("tiny-chat", "4M", None)
    assert by_hub_id.model_name == "someone/tiny-chat"
    deeper = json.loads((tiny_model_dir / "config.json").read_text()) | {"num_hidden_layers": 400}
    folder = config_only(tmp_path, "deep-model", deeper)  # no weights: only the config is read
    by_directory = model_shape(str(folder))
    assert by_directory.label == "deep-model" and by_directory.model_name == str(folder.resolve())
    assert by_directory.architecture.num_hidden_layers == 400 and by_directory.params == "291M"
    missing = model_shape("llama-8b", preset_when_missing=True)  # a preset not downloaded: the preset's shape
    assert missing.architecture == PRESETS["llama-8b"].architecture and missing.resolved is None
    assert missing.params == "8B" and missing.model_name == PRESETS["llama-8b"].hub_id
    with pytest.raises(ModelNotAvailableError, match="hf download someone/absent"):
        model_shape("someone/absent", preset_when_missing=True)
    with pytest.raises(InvalidModelNameError, match="synthetic models are built from presets"):
        model_shape("someone/tiny-chat", synthetic=True)
    assert model_shape("llama-8b", synthetic=True).architecture == PRESETS["llama-8b"].architecture
    with pytest.raises(ModelFileError, match=r"config.json: model config has no usable hidden_size"):
        model_shape(str(config_only(tmp_path, "shapeless", {"model_type": "my-own", "num_attention_heads": 2})))


def test_cached_causal_lms_are_found_through_scan_cache_dir(hub_cache, tmp_path):
    hub_cache.add("someone/tiny-chat")
    hub_cache.add("someone/encoder", source=config_only(tmp_path, "bert", {"architectures": ["BertModel"],
                                                                          "model_type": "bert"}))
    hub_cache.add("someone/broken", source=config_only(tmp_path, "broken", "{broken"))
    hub_cache.add("someone/gpt", source=config_only(tmp_path, "gpt", {"model_type": "gpt2"}))  # no architectures
    hub_cache.add("someone/unfinished", set_main=False)  # no refs/main
    found = cached_causal_lms()
    assert found.cache == hub_cache.path
    assert found.hub_ids == ["someone/broken", "someone/gpt", "someone/tiny-chat"]
    assert found.skipped == ["someone/encoder", "someone/unfinished"]
    assert cached_causal_lms(tmp_path / "no-cache-here").hub_ids == []
