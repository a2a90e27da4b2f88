"""`your-ai validate --lm-eval` as a user runs it: lm-evaluation-harness on a local task YAML, the tiny model
and a real adapter; a standard task without its data offline; an unknown task; lm-eval not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_inference import make_adapter

pytest.importorskip("lm_eval")

ROWS = [
    {"question": "What colour is the sky on a clear day?", "choices": ["blue", "green", "red"], "answer": 0},
    {"question": "How many legs has a cat?", "choices": ["two", "four", "six"], "answer": 1},
    {"question": "Which of these is a fruit?", "choices": ["carrot", "apple", "potato"], "answer": 1},
    {"question": "What do bees make?", "choices": ["honey", "milk", "silk"], "answer": 0},
]
TASK_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (folder / "tiny_mc.yaml").write_text(TASK_YAML.format(data=data))
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("lm-eval-adapter") / "adapter")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "your_ai", "validate", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


@pytest.fixture(scope="module")
def lm_eval_run(adapter_dir, task_folder, tmp_path_factory):
    """One validate run: the suite (1 test of each kind), the local task and arc_easy (no data offline)."""
    output = tmp_path_factory.mktemp("lm-eval-report") / "report.json"
    result = run_cli("--checkpoint", str(adapter_dir), "--limit", "1", "--max-tokens", "2", "--device", "cpu",
                     "--lm-eval", "tiny_mc,arc_easy", "--lm-eval-include", str(task_folder), "--batch-size", "8",
                     "--output", str(output))
    assert result.returncode == 0, result.stderr
    return result, json.loads(output.read_text())


def test_a_local_task_runs_on_base_and_fine_tuned_and_a_task_without_data_is_skipped(lm_eval_run):
    result, report = lm_eval_run
    skip_line = next(line for line in result.stderr.splitlines() if line.startswith("lm-eval task arc_easy skipped:"))
    assert "(allenai/ai2_arc, ARC-Easy) are not in the datasets cache and HF_HUB_OFFLINE is set" in skip_line
    assert "datasets.load_dataset('allenai/ai2_arc', 'ARC-Easy')" in skip_line and "HF_DATASETS_CACHE" in skip_line
    assert "lm-eval: tiny" in result.stdout and "Difference" in result.stdout

    assert "categories" in report  # the suite's report, with the lm_eval section added
    section = report["lm_eval"]
    assert section["skipped"] == [{"task": "arc_easy", "reason": skip_line.split(" skipped: ", 1)[1]}]
    assert section["settings"]["offline"] == "HF_HUB_OFFLINE is set" and section["settings"]["dtype"] == "float32"
    task = section["tasks"]["tiny_mc"]
    assert task["num_fewshot"] == 0 and task["samples"] == len(ROWS)
    acc = task["metrics"]["acc"]
    for label in ("base", "fine-tuned"):
        samples = section["samples"][label]["tiny_mc"]
        # lm-eval's accuracy: the target's log-likelihood is the highest of the choices'
        right = [max(range(3), key=lambda i: s["responses"][i][0]) == s["target"] for s in samples]
        assert 0.0 <= acc[label]["value"] <= 1.0 and acc[label]["value"] == pytest.approx(sum(right) / len(ROWS))
        assert acc[label]["stderr"] > 0
    assert acc["difference"] == pytest.approx(acc["fine-tuned"]["value"] - acc["base"]["value"])
    # the adapter changes the model: every choice gets another log-likelihood
    base, tuned = (section["samples"][label]["tiny_mc"] for label in ("base", "fine-tuned"))
    pairs = [(b[0], t[0]) for bs, ts in zip(base, tuned) for b, t in zip(bs["responses"], ts["responses"])]
    assert len(pairs) == 3 * len(ROWS) and all(abs(b - t) > 1e-5 for b, t in pairs)


def test_the_figures_equal_lm_evals_own_loading_of_the_model_and_adapter(lm_eval_run, tiny_model_dir, adapter_dir,
                                                                          task_folder):
    """lm-eval's ``hf`` model from the model folder with ``peft=`` the adapter gives the same log-likelihoods."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_folder), include_defaults=False)
    results = simple_evaluate("hf", model_args={"pretrained": str(tiny_model_dir), "peft": str(adapter_dir),
                                                "dtype": "float32", "device": "cpu"},
                              tasks=["tiny_mc"], task_manager=manager, log_samples=True, batch_size=8)
    section = lm_eval_run[1]["lm_eval"]
    theirs = [choice[0] for sample in results["samples"]["tiny_mc"] for choice in sample["filtered_resps"]]
    ours = [choice[0] for sample in section["samples"]["fine-tuned"]["tiny_mc"] for choice in sample["responses"]]
    assert len(ours) == 3 * len(ROWS) and ours == pytest.approx(theirs, abs=1e-4)
    assert section["tasks"]["tiny_mc"]["metrics"]["acc"]["fine-tuned"]["value"] == results["results"]["tiny_mc"]["acc,none"]


def test_unknown_task_and_misused_flags_fail_with_one_line():
    from click.testing import CliRunner

    from your_ai.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["validate", "--model", "tiny", "--lm-eval", "arc_easy,arc_eazy"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("Error: --lm-eval arc_eazy: no such lm-eval task") and "did you mean arc_easy" in line
    assert "\n" not in line

    result = runner.invoke(main, ["validate", "--lm-eval-limit", "2"])
    assert result.exit_code == 2 and "go with --lm-eval TASKS" in result.output


def test_a_task_whose_data_cannot_be_read_fails_with_one_line_naming_the_file(tmp_path):
    from click.testing import CliRunner

    from your_ai.cli import main

    data = tmp_path / "rows.jsonl"
    (tmp_path / "tiny_mc.yaml").write_text(TASK_YAML.format(data=data))
    for rows, named in ((json.dumps(ROWS[0]) + "\nnot json\n", f"its data ({data}) cannot be read: JSON parse error"),
                        (json.dumps({**ROWS[0], "answer": 7}) + "\n", "a target index past the list of choices")):
        data.write_text(rows)
        result = CliRunner().invoke(main, ["validate", "--model", "tiny", "--lm-eval", "tiny_mc",
                                           "--lm-eval-include", str(tmp_path)])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: --lm-eval tiny_mc: ") and named in result.output
        assert result.output.count("\n") == 1, result.output


def test_more_few_shot_examples_than_the_task_holds_names_the_flag(task_folder):
    from your_ai.eval import inference, lm_eval_tasks

    prepared = lm_eval_tasks.prepare_tasks(["tiny_mc"], [str(task_folder)])
    im = inference.load_for_inference("tiny", device="cpu")
    with pytest.raises(lm_eval_tasks.LmEvalError, match=r"failed on tiny_mc: Sample larger than population.* "
                       r"\(--lm-eval-fewshot 50 asks for more examples than the task has to draw from\)$"):
        lm_eval_tasks.run_tasks(im, prepared, num_fewshot=50)


def test_missing_lm_eval_names_the_flag_and_the_install_command(monkeypatch):
    from click.testing import CliRunner

    from your_ai.cli import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as when the package is not installed
    result = CliRunner().invoke(main, ["validate", "--lm-eval", "arc_easy"])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: --lm-eval needs lm-evaluation-harness, which is not installed: "
                                     "pip install 'your-ai[lm-eval]'")


def test_an_unreachable_hub_turns_offline_at_once(monkeypatch):
    import time

    from your_ai.hub_offline import offline_reason

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    assert offline_reason() == "the Hugging Face Hub cannot be reached"
    assert time.monotonic() - started < 3
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
