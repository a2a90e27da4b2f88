"""`your-ai generate`, `evaluate` and `export` as a user runs them (real subprocesses and files)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from test_inference import make_adapter


def run_cli(*args, umask=None):
    return subprocess.run([sys.executable, "-m", "your_ai", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ), umask=-1 if umask is None else umask)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("cli-adapter") / "adapter")


def _blocks(stdout: str) -> dict[str, str]:
    """``--- label ... ---`` headed blocks of ``generate --compare``, by first word of the label."""
    blocks, current = {}, None
    for line in stdout.splitlines():
        if line.startswith("--- ") and line.endswith(" ---"):
            current = line[4:].split(":")[0]
            blocks[current] = []
        elif current:
            blocks[current].append(line)
    return {key: "\n".join(value) for key, value in blocks.items()}


def test_generate_compare_prints_base_and_fine_tuned_outputs(adapter_dir):
    prompt = "The bridge was completed in"
    result = run_cli("generate", "--prompt", prompt, "--checkpoint", str(adapter_dir), "--compare",
                     "--temperature", "0", "--max-tokens", "10")
    assert result.returncode == 0, result.stderr
    assert "--- base model: tiny (greedy) ---" in result.stdout
    assert f"--- fine-tuned: {adapter_dir.resolve()} (greedy) ---" in result.stdout
    blocks = _blocks(result.stdout)
    assert blocks["base model"].strip() and blocks["fine-tuned"].strip()
    assert blocks["base model"] != blocks["fine-tuned"]

    from your_ai.eval import inference
    im = inference.load_for_inference(checkpoint=adapter_dir)
    assert blocks["fine-tuned"] == inference.generate(im, prompt, max_tokens=10, temperature=0)
    with im.model.disable_adapter():
        assert blocks["base model"] == inference.generate(im, prompt, max_tokens=10, temperature=0)

    single = run_cli("generate", "--prompt", prompt, "--checkpoint", str(adapter_dir),
                     "--temperature", "0", "--max-tokens", "10")
    assert single.returncode == 0, single.stderr
    assert single.stdout == blocks["fine-tuned"] + "\n"


def test_an_empty_answer_comes_with_a_hint(tiny_model_dir, tmp_path):
    """A model whose end token is the first token it writes (through the chat template or not)."""
    import shutil

    from your_ai.eval import inference
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "ends-at-once")
    im = inference.load_for_inference(str(model_dir))
    firsts = {inference._decode(im, [inference.prompt_token_ids(im.tokenizer, "hi", chat)], 1, 0.0)[0][0]
              for chat in (None, False)}
    config = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps(dict(config, eos_token_id=sorted(firsts))))

    result = run_cli("generate", "--model", str(model_dir), "--prompt", "hi", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "\n"
    assert "(empty answer: the model ended at once; try --temperature 0.7)" in result.stderr
    result = run_cli("generate", "--model", str(model_dir), "--prompt", "hi", "--temperature", "0", "--raw")
    assert result.returncode == 0 and result.stdout == "\n"
    assert "(empty answer: the model ended at once; try without --raw / --temperature 0.7)" in result.stderr


def test_generate_usage_and_checkpoint_errors(tmp_path):
    result = run_cli("generate", "--prompt", "hi", "--raw", "--chat")
    assert result.returncode == 2 and "--raw and --chat contradict each other" in result.stderr
    result = run_cli("generate", "--prompt", "hi", "--compare")
    assert result.returncode == 2 and "--compare needs --checkpoint" in result.stderr
    result = run_cli("generate", "--prompt", "hi", "--checkpoint", str(tmp_path))
    assert result.returncode == 1
    assert f"checkpoint '{tmp_path}' is not a LoRA adapter folder: it has no adapter_config.json" in result.stderr


def test_generate_refuses_a_nan_temperature_and_a_seed_out_of_range():
    from click.testing import CliRunner

    from your_ai.cli import main

    runner = CliRunner()
    for flags, named in ((["--temperature", "nan"], "'--temperature': 'nan' is not a number >= 0"),
                         (["--seed", str(2**64)], "'--seed': 18446744073709551616 is not in the range"),
                         (["--seed", "-1"], "'--seed': -1 is not in the range")):
        result = runner.invoke(main, ["generate", "--model", "tiny", "--prompt", "hi", *flags])
        assert result.exit_code == 2 and named in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_empty_output_path_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from your_ai.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("kept")
    for command in (["export", "--checkpoint", str(tmp_path / "adapter"), "--force", "--output", ""],
                    ["validate", "--model", "tiny", "--output", ""], ["validate", "--model", "tiny", "--chart", " "]):
        result = CliRunner().invoke(main, command)
        flag = command[-2]
        assert result.exit_code == 2 and result.output == f"Error: {flag} is empty; give the path to write\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_evaluate_json_and_bad_lines(adapter_dir, tmp_path):
    data = tmp_path / "val.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in (
        {"text": "The bridge was completed in 1931 and carried 40 tonnes.", "auth_weight": 0.05, "prov_entropy": 7.5},
        {"prompt": "When was the bridge completed?", "completion": " In 1931."},
        {"text": "Engineers measured the load on the bridge each spring."},
    )) + "\n")
    result = run_cli("evaluate", "--data", str(data), "--checkpoint", str(adapter_dir), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "tiny" and report["checkpoint"] == str(adapter_dir.resolve())
    assert report["record_count"] == 3 and [r["line"] for r in report["records"]] == [1, 2, 3]
    assert report["token_count"] == sum(r["tokens"] for r in report["records"]) > 10
    weighted = sum(r["cross_entropy"] * r["tokens"] for r in report["records"]) / report["token_count"]
    assert report["cross_entropy"] == pytest.approx(weighted)
    assert report["perplexity"] == pytest.approx(math.exp(report["cross_entropy"]))
    assert 0 < report["cross_entropy"] < 2 * math.log(2048)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "x", "auth_weight": 1.5, "prov_entropy": 2}\nnot json\n')
    result = run_cli("evaluate", "--data", str(bad))
    assert result.returncode == 1
    assert f"{bad}:2: auth_weight=1.5 is out of range" in result.stderr
    assert f"{bad}:3: not valid JSON" in result.stderr
    assert result.stdout == ""


def test_export_writes_a_standalone_model_with_the_adapters_logits(adapter_dir, tmp_path):
    output = tmp_path / "merged"
    result = run_cli("export", "--checkpoint", str(adapter_dir), "--output", str(output), umask=0o022)
    assert result.returncode == 0, result.stderr
    assert f"Saved the merged model to {output}" in result.stdout
    assert (output / "model.safetensors").is_file() and not list(output.glob("adapter_*"))
    assert output.stat().st_mode & 0o777 == 0o755  # the user's umask, as any tool would create it
    assert {path.name: path.stat().st_mode & 0o777 for path in output.iterdir()} == {
        path.name: 0o644 for path in output.iterdir()}

    from transformers import AutoModelForCausalLM

    from your_ai.eval import inference
    merged = AutoModelForCausalLM.from_pretrained(output, local_files_only=True)
    im = inference.load_for_inference(checkpoint=adapter_dir)
    ids = torch.tensor([[0, 17, 250, 999, 1500, 42, 7]])
    with torch.no_grad():
        expected = im.model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        with im.model.disable_adapter():
            base = im.model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)
