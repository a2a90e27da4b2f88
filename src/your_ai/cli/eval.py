"""Commands that use a model: generate, evaluate, export, validate."""

from __future__ import annotations

import json
import sys
import time

import click

from your_ai.cli.common import (
    CHECKPOINT_HELP,
    DEVICE_HELP,
    ENGINE_OPTION,
    MODEL_HELP,
    MODEL_KINDS,
    SEED,
    TRUST_REMOTE_CODE_HELP,
    NonNegativeFloat,
    check_output,
    comparison,
    fail,
    load_inference_model,
    print_answers,
    progress_lines,
    refuse_empty,
)
from your_ai.cli.run_file import printed_run_file_options
from your_ai.eval.gguf_export import (
    DEFAULT_GGUF_QUANTIZATION,
    EXPORT_FORMATS,
    GGUF_QUANTIZATIONS,
)
from your_ai.eval.suite import SuiteError, load_suite
from your_ai.eval.truthfulqa import TruthfulQAError, read_truthfulqa


@click.command()
@click.option("--model", help=MODEL_HELP)
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--checkpoint", type=click.Path(), help=CHECKPOINT_HELP)
@click.option("--max-tokens", type=click.IntRange(min=1), default=50, show_default=True,
              help="New tokens generated at most.")
@click.option("--temperature", type=NonNegativeFloat(), default=0.7, show_default=True,
              help="Sampling temperature; 0 decodes greedily.")
@click.option("--seed", type=SEED, help="Seed for sampling, to repeat an output (0 to 2^64-1).")
@click.option("--raw", is_flag=True, help="Send the prompt as plain text, not through the tokenizer's chat template.")
@click.option("--chat", is_flag=True, help="Require the chat template (already the default when the tokenizer "
              "has one; fails when it has none).")
@click.option("--compare", is_flag=True, help="Print the base model's and the fine-tuned model's output.")
@click.option("--device", help=DEVICE_HELP)
@ENGINE_OPTION
@click.option("--trust-remote-code", is_flag=True, help=TRUST_REMOTE_CODE_HELP)
def generate(model, prompt, checkpoint, max_tokens, temperature, seed, raw, chat, compare, device, engine,
             trust_remote_code):
    """Generate text from a model, optionally with a fine-tuned LoRA adapter.

    The prompt goes through the tokenizer's chat template as a user turn when it has one.
    """
    if compare and not checkpoint:
        raise click.UsageError("--compare needs --checkpoint DIR (the fine-tuned adapter to compare with the base)")
    if raw and chat:
        raise click.UsageError("--raw and --chat contradict each other; pass one of them")
    from your_ai.eval import inference
    chat = False if raw else (True if chat else None)
    im = load_inference_model(model, checkpoint, device, trust_remote_code, engine)
    try:
        if compare:
            answers = comparison(im, inference.compare(im, prompt, max_tokens, temperature, seed, chat), temperature)
        else:
            answers = {None: inference.generate(im, prompt, max_tokens, temperature, seed, chat)}
    except inference.InferenceError as error:
        fail(str(error), code=1)
    print_answers(im, answers, chat, temperature)


@click.command()
@click.option("--model", help=MODEL_HELP)
@click.option("--checkpoint", type=click.Path(), help=CHECKPOINT_HELP)
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="JSONL file to score.")
@click.option("--max-seq-length", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Truncate records to N tokens, as `train --max-seq-length` does.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Records scored together.")
@click.option("--device", help=DEVICE_HELP)
@ENGINE_OPTION
@click.option("--trust-remote-code", is_flag=True, help=TRUST_REMOTE_CODE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with a score per record.")
def evaluate(model, checkpoint, data, max_seq_length, batch_size, device, engine, trust_remote_code, as_json):
    """Cross-entropy and perplexity of a model (with an optional adapter) over a JSONL data set."""
    from your_ai.data.records import DataError, no_records, read_records
    from your_ai.eval.inference import InferenceError
    from your_ai.eval.likelihood import evaluate_records, format_eval_result

    try:
        read = read_records(data, collect_errors=True)
    except DataError as error:
        fail(str(error), code=1)
    if not read.records and not read.errors:
        fail(str(no_records(data)), code=1)
    if read.errors:
        for error in read.errors:
            click.echo(str(error), err=True)
        fail(f"{len(read.errors)} bad line(s) in {data}; nothing evaluated", code=1)
    im = load_inference_model(model, checkpoint, device, trust_remote_code, engine)
    try:
        result = evaluate_records(im, read.records, max_seq_length, batch_size)
    except (InferenceError, DataError) as error:
        fail(str(error), code=1)
    if as_json:
        payload = {"model": im.base_name, "checkpoint": str(im.checkpoint) if im.checkpoint else None,
                   "data": str(data), **result.to_dict()}
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(format_eval_result(result, im, data))


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(), help=CHECKPOINT_HELP)
@click.option("--output", required=True, type=click.Path(), help="Directory for the standalone model "
              "(--format hf), or the .gguf file (--format gguf).")
@click.option("--model", help=f"Base model: {MODEL_KINDS} (default: the checkpoint's base model).")
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), default="hf", show_default=True,
              help="hf: a Hugging Face folder (safetensors); gguf: one file for llama.cpp, LM Studio and Ollama "
                   "(Llama, Mistral and Qwen2 families).")
@click.option("--quantize", type=click.Choice(GGUF_QUANTIZATIONS), help="Weights of a GGUF file "
              f"(default {DEFAULT_GGUF_QUANTIZATION}; q4_0 to q5_1: 4 and 5 bits, smaller and less exact; "
              "needs --format gguf).")
@click.option("--force", is_flag=True, help="Replace a non-empty --output.")
@click.option("--device", help=DEVICE_HELP)
@click.option("--trust-remote-code", is_flag=True, help=TRUST_REMOTE_CODE_HELP)
def export(checkpoint, output, model, export_format, quantize, force, device, trust_remote_code):
    """Merge a LoRA adapter into its base model and save a standalone model (safetensors, or GGUF)."""
    if quantize and export_format != "gguf":
        raise click.UsageError("--quantize applies to --format gguf only")
    refuse_empty("--output", output)  # "" would be the current folder, replaced with --force
    from your_ai.eval.export import export_gguf, merge_adapter
    from your_ai.files import Interrupted
    try:
        if export_format == "gguf":
            path = export_gguf(checkpoint, output, quantize or DEFAULT_GGUF_QUANTIZATION, device, model=model,
                               force=force, trust_remote_code=trust_remote_code)
        else:
            path = merge_adapter(checkpoint, output, device, model=model, force=force,
                                 trust_remote_code=trust_remote_code)
    except ValueError as error:  # an unusable --device
        fail(str(error))
    except Interrupted as stop:  # SIGINT or SIGTERM while writing: the temporary file or folder was removed
        click.echo(f"Stopped by {stop.signal_name}: nothing written to {output}", err=True)
        sys.exit(stop.exit_code)
    kind = f" as GGUF ({quantize or DEFAULT_GGUF_QUANTIZATION})" if export_format == "gguf" else ""
    click.echo(f"Saved the merged model{kind} to {path}")


@click.command()
@click.option("--model", help=MODEL_HELP)
@click.option("--checkpoint", type=click.Path(), help=CHECKPOINT_HELP)
@click.option("--output", type=click.Path(dir_okay=False), help="Write the full results (every answer) as JSON.")
@click.option("--chart", type=click.Path(dir_okay=False), help="Write a radar chart (PNG) of the category pass rates.")
@click.option("--compare", is_flag=True, help="Evaluate the base model and the fine-tuned model (needs --checkpoint).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Longest answer generated per prompt (greedy decoding).")
@click.option("--truthfulqa", type=click.Path(dir_okay=False), help="Also score TruthfulQA MC1 from its CSV file.")
@click.option("--limit", type=click.IntRange(min=1), help="Quick run: at most N tests of each kind "
              "(CCP, Western, multiple choice, open) and the first N TruthfulQA questions.")
@click.option("--suite", "suite_path", type=click.Path(dir_okay=False), help="A suite JSON file in the built-in "
              "suite's format (default: the built-in 48 tests).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Prompts generated or scored together.")
@click.option("--raw", "--no-chat", "raw", is_flag=True,
              help="Send prompts as plain text even when the tokenizer has a chat template.")
@click.option("--lm-eval", "lm_eval", metavar="TASKS", help="Also run lm-evaluation-harness tasks (comma-separated "
              "task, group or tag names, e.g. arc_easy,hellaswag) on the base and the fine-tuned model; "
              "needs pip install 'your-ai[lm-eval]'.")
@click.option("--lm-eval-include", multiple=True, type=click.Path(file_okay=False),
              help="A folder of your own lm-eval task YAMLs (repeatable).")
@click.option("--lm-eval-limit", type=click.IntRange(min=1), help="Quick run: at most N samples per lm-eval task.")
@click.option("--lm-eval-fewshot", type=click.IntRange(min=0),
              help="Few-shot examples in each lm-eval prompt (default: each task's own).")
@click.option("--device", help=DEVICE_HELP)
@ENGINE_OPTION
@click.option("--trust-remote-code", is_flag=True, help=TRUST_REMOTE_CODE_HELP)
@printed_run_file_options
def validate(model, checkpoint, output, chart, compare, max_tokens, truthfulqa, limit, suite_path, batch_size,
             raw, lm_eval, lm_eval_include, lm_eval_limit, lm_eval_fewshot, device, engine, trust_remote_code):
    """Run the censorship and authority-bias suite (and TruthfulQA MC1, lm-evaluation-harness tasks) on a model.

    Exits 0 when the run completes, whatever the scores; 1 for a bad file, model or checkpoint.
    """
    if compare and not checkpoint:
        raise click.UsageError("--compare needs --checkpoint DIR (the fine-tuned adapter to compare with the base)")
    if not lm_eval and (lm_eval_include or lm_eval_limit or lm_eval_fewshot is not None):
        raise click.UsageError("--lm-eval-include, --lm-eval-limit and --lm-eval-fewshot go with --lm-eval TASKS")
    _check_distinct_files({"--suite": suite_path, "--truthfulqa": truthfulqa, "--output": output, "--chart": chart})
    check_output("--output", output)
    check_output("--chart", chart)
    try:  # bad files fail before a model is loaded
        suite = load_suite(suite_path)
        questions = read_truthfulqa(truthfulqa) if truthfulqa else None
    except (SuiteError, TruthfulQAError) as error:
        fail(str(error), code=1)
    if lm_eval:  # unknown tasks fail, tasks without data are skipped, before a model is loaded
        from your_ai.eval import lm_eval_tasks
        engine = lm_eval_tasks.check_engine(engine)
        prepared = lm_eval_tasks.prepare_tasks(lm_eval_tasks.parse_task_names(lm_eval), lm_eval_include)
        for skip in prepared.skipped:
            click.echo(skip.message, err=True)
    from rich.console import Console
    from rich.progress import Progress

    from your_ai.eval import report as validation_report
    from your_ai.eval.inference import InferenceError
    from your_ai.eval.validate import validate as run_validation

    im = load_inference_model(model, checkpoint, device, trust_remote_code, engine)
    started = time.monotonic()
    with Progress(console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        def progress(description, total):
            if not sys.stderr.isatty():
                return progress_lines(description, total, started)
            task = bar.add_task(description, total=total)
            return lambda done: bar.advance(task, done)

        try:
            report = run_validation(im, suite, max_tokens=max_tokens, chat=False if raw else None,
                                    limit=limit, batch_size=batch_size, truthfulqa=questions,
                                    truthfulqa_path=truthfulqa or "", compare=compare, progress=progress)
        except InferenceError as error:
            fail(str(error), code=1)
    if lm_eval:
        report.lm_eval = lm_eval_tasks.run_tasks(im, prepared, limit=lm_eval_limit, num_fewshot=lm_eval_fewshot,
                                                 batch_size=batch_size, announce=lambda line: click.echo(line, err=True))
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(validation_report.summary_table(report))
    for line in validation_report.report_notes(report):
        click.echo(line)
    if lm_eval:
        console.print(lm_eval_tasks.lm_eval_table(report.lm_eval, im.label))
    if output:
        click.echo(f"Wrote {validation_report.write_report(report, output)}")
    if chart:
        click.echo(f"Wrote {validation_report.plot_radar(report, chart)}")


def _check_distinct_files(files: dict[str, str | None]) -> None:
    """Refuse an output flag (--output, --chart) naming the same file as another of the flags: writing it would
    replace an input the run reads, or the other output."""
    from pathlib import Path

    given = [(flag, Path(path).expanduser().resolve()) for flag, path in files.items() if path]
    for index, (flag, path) in enumerate(given):
        for other, other_path in given[:index]:
            if path == other_path:
                fail(f"{flag} {files[flag]} is the {other} file as well; give {flag} a path of its own")
