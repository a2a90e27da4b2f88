"""generate, evaluate and validate on the MLX engine (mlx[cpu] on Linux): the same greedy output and
cross-entropy as the torch engine, with a PEFT adapter the torch engine wrote."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlx.core")

from test_inference import make_adapter

from your_ai.data.records import check_record
from your_ai.eval import inference, likelihood

PROMPTS = ["Hello there", "The capital of France is"]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def engines(adapter):
    return (inference.load_for_inference(checkpoint=adapter, device="cpu", engine="torch"),
            inference.load_for_inference(checkpoint=adapter, engine="mlx"))


def test_greedy_output_equals_the_torch_engine(engines):
    on_torch, on_mlx = engines
    assert on_mlx.device == "mlx" and on_mlx.has_adapter
    for chat in (None, False):
        expected = inference.generate_batch(on_torch, PROMPTS, max_tokens=12, temperature=0, chat=chat)
        assert inference.generate_batch(on_mlx, PROMPTS, max_tokens=12, temperature=0, chat=chat) == expected
    comparison = inference.compare(on_mlx, PROMPTS[0], max_tokens=12, temperature=0)
    assert comparison == inference.compare(on_torch, PROMPTS[0], max_tokens=12, temperature=0)
    assert comparison.base != comparison.fine_tuned  # the adapter changes the output and is switched off


def test_cross_entropy_equals_the_torch_engine(engines):
    records = [check_record({"text": text}, "data.jsonl", line) for line, text in enumerate(
        ["The quick brown fox jumps over the lazy dog.", "Primary sources from 1923: a letter.", "ok"], start=1)]
    expected = likelihood.evaluate_records(engines[0], records, max_seq_length=64, batch_size=2)
    result = likelihood.evaluate_records(engines[1], records, max_seq_length=64, batch_size=2)
    assert result.token_count == expected.token_count
    assert result.cross_entropy == pytest.approx(expected.cross_entropy, abs=1e-4)
    for mine, theirs in zip(result.records, expected.records):
        assert mine.cross_entropy == pytest.approx(theirs.cross_entropy, abs=1e-4)


def test_cli_generate_and_evaluate_with_engine_mlx(adapter, tmp_path):
    from click.testing import CliRunner

    from your_ai.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": "A short record to score."}) + "\n")
    runner = CliRunner()
    result = runner.invoke(main, ["generate", "--checkpoint", str(adapter), "--prompt", "Hi", "--max-tokens", "5",
                                  "--temperature", "0", "--engine", "mlx"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["evaluate", "--checkpoint", str(adapter), "--data", str(data), "--engine", "mlx",
                                  "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["token_count"] > 0
    result = runner.invoke(main, ["generate", "--model", "tiny", "--prompt", "Hi", "--engine", "mlx",
                                  "--device", "cuda"])
    assert result.exit_code == 2 and "--device cuda is a device of the torch engine" in result.output


def test_validate_engine_mlx_scores_as_the_torch_engine(adapter, tmp_path):
    from click.testing import CliRunner

    from your_ai.cli import main

    reports = {}
    for engine in ("torch", "mlx"):
        output = tmp_path / f"{engine}.json"
        result = CliRunner().invoke(main, ["validate", "--checkpoint", str(adapter), "--engine", engine, "--limit", "1",
                                           "--max-tokens", "6", "--output", str(output)]
                                    + (["--device", "cpu"] if engine == "torch" else []))
        assert result.exit_code == 0, result.output
        reports[engine] = json.loads(output.read_text())
    answers = {engine: [(t["id"], t.get("response"), t.get("score"), t.get("passed")) for t in report["tests"]]
               for engine, report in reports.items()}
    assert answers["mlx"] == answers["torch"] and answers["mlx"]
