"""The ``your-ai`` command line: each command parses its flags and calls one library function."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
from typing import NoReturn

import click

from your_ai import __version__
from your_ai.errors import RECOGNISED, UserError, user_message
from your_ai.files import check_writable, writing
from your_ai.step_modes import STEP_MODES

DEBUG_ENV = "YOUR_AI_DEBUG"


def _fail(message: str, code: int = 2) -> NoReturn:
    """End the command with ``Error: message`` and exit code ``code`` (shown by ``_Commands``)."""
    raise UserError(message, exit_code=code)


def _check_output(flag: str, path: str | None, directory: bool = False) -> None:
    """Refuse a flag's output path that cannot be written (``files.check_writable``), before any work."""
    if path:
        check_writable(path, directory=directory, shown_as=f"{flag} {path}")


class _ErrorLines:
    """Shows each user-caused error (``errors.user_message``) once, as one ``Error:`` line. An error in a thread
    (a writer thread, whose error the command usually raises again) waits for the end of the process, and is
    shown then only if the command did not show it."""

    def __init__(self) -> None:
        self.debug = False  # --debug: every error keeps its traceback
        self._shown: list[BaseException] = []
        self._from_threads: list[BaseException] = []
        self._thread_hook = threading.excepthook

    def install(self, debug: bool) -> None:
        self.debug = debug
        if threading.excepthook != self.thread_error:
            threading.excepthook = self.thread_error
            atexit.register(self.show_thread_errors)

    def show(self, error: BaseException) -> int | None:
        """Print ``error``'s line unless it (or an error it came from) was shown; its exit code, or None for
        an error that is not the user's (a bug) or under --debug."""
        shown = None if self.debug else user_message(error)
        if shown is None:
            return None
        chain, link = [], error
        while link is not None and link not in chain:
            chain.append(link)
            link = link.__cause__ or link.__context__
        if not any(link is done for link in chain for done in self._shown):
            click.echo(f"Error: {shown[0]}", err=True)
        self._shown.extend(chain)
        return shown[1]

    def thread_error(self, args) -> None:
        """``threading.excepthook``: a user-caused error kept for ``show_thread_errors``, anything else as usual."""
        if self.debug or args.exc_value is None or user_message(args.exc_value) is None:
            self._thread_hook(args)
        else:
            self._from_threads.append(args.exc_value)

    def show_thread_errors(self) -> None:
        """At exit (after the threads ended): the thread errors the command did not show."""
        for error in self._from_threads:
            self.show(error)


_errors = _ErrorLines()


class _Commands(click.Group):
    """The one place where errors reach the user: a user-caused error ends the command with one ``Error:``
    line and its exit code; any other error, and every error under --debug, shows its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RECOGNISED as error:
            code = _errors.show(error)
            if code is None:
                raise
            ctx.exit(code)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="your-ai")
@click.option("--debug", is_flag=True, envvar=DEBUG_ENV,
              help=f"Show the full traceback of an error instead of its one-line message (or set {DEBUG_ENV}=1).")
def main(debug: bool) -> None:
    """Fine-tune open LLMs with LoRA under the Empirical Distrust objective,
    and find out empirically which models and settings fit your hardware."""
    _errors.install(debug)
    if debug:  # processes this command starts (torchrun, fit tests) show theirs too
        os.environ[DEBUG_ENV] = "1"
    # Loading and saving weights would draw per-shard progress bars; the commands report their own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from your_ai.quantize import quiet_torchao_import

    quiet_torchao_import()


# ---------------------------------------------------------------------------- hardware

@main.command()
@click.option("--output", type=click.Path(dir_okay=False), help="Where to save the profile (default: config dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def setup(output, as_json):
    """Detect this machine's hardware and save a hardware profile."""
    from your_ai import hardware

    _check_output("--output", output)
    profile = hardware.detect_hardware()
    path = hardware.save_hardware_profile(profile, output)
    if as_json:
        click.echo(json.dumps(profile, indent=2))
    else:
        click.echo(hardware.format_hardware_profile(profile))
    click.echo(f"Saved hardware profile to {path}")


@main.command()
@click.option("--memory", type=float, help="Memory in GB to plan for (default: the detected device's memory).")
@click.option("--batch-size", type=int, default=2, show_default=True)
@click.option("--lora-rank", type=int, default=64, show_default=True)
@click.option("--lora-layers", type=int, default=16, show_default=True)
@click.option("--max-seq-length", type=int, default=1024, show_default=True)
@click.option("--quantize", type=int, help="4: estimate QLoRA, the decoder linear weights in 4-bit NF4.")
@click.option("--model", "models", multiple=True, help="Estimate this model instead of the presets: a preset, a hub "
              "id (from the local cache) or a model directory; repeat it or give a comma-separated list.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def recommend(memory, batch_size, lora_rank, lora_layers, max_seq_length, quantize, models, as_json):
    """List the presets (or the given models) whose estimated LoRA training memory fits 80% of MEMORY.

    Exit code 1 when a given model has no estimate (not available, unreadable config)."""
    from your_ai import recommend as recommend_module

    if memory is not None and memory <= 0:
        _fail(f"--memory={memory} must be a positive number of GB")
    try:
        report = recommend_module.recommend_presets(
            memory_gb=memory,
            batch_size=batch_size,
            lora_rank=lora_rank,
            lora_layers=lora_layers,
            seq_length=max_seq_length,
            quantize=quantize,
            models=[name.strip() for value in models for name in value.split(",") if name.strip()],
        )
    except ValueError as error:  # --quantize 8, not a model name
        _fail(str(error))
    click.echo(json.dumps(report, indent=2) if as_json else recommend_module.format_recommendation(report))
    sys.exit(1 if any(row["error"] for row in report.get("models", [])) else 0)


# ---------------------------------------------------------------------------- data


def _report_bad_line(error) -> None:
    click.echo(f"\r\033[Kbad line: {error}" if sys.stderr.isatty() else f"bad line: {error}", err=True)


def _show_progress(lines_read: int) -> None:
    click.echo(f"\r{lines_read:,} lines read", err=True, nl=False)


@main.command()
@click.argument("more_inputs", nargs=-1, metavar="[PATH]...")
@click.option("--input", "inputs", multiple=True, metavar="PATH",
              help="Raw JSONL file, glob or directory (its *.jsonl); several may follow one --input.")
@click.option("--output", "output_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for train.jsonl, val.jsonl and prepare_report.json.")
@click.option("--train-size", type=click.IntRange(min=0), help="Records to write to train.jsonl.")
@click.option("--val-size", type=click.IntRange(min=0), help="Records to write to val.jsonl.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="Share of records for val.jsonl when --val-size is not given.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed for balancing and splitting.")
@click.option("--no-balance", is_flag=True, help="Keep every tier whole instead of downsampling to the target mix.")
@click.option("--skip-bad", is_flag=True, help="Leave bad lines out (they are still listed) instead of stopping.")
@click.option("--key", metavar="FIELD", help="Treat records with the same FIELD value as exact duplicates.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes that score documents (default: all CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prepare(more_inputs, inputs, output_dir, train_size, val_size, val_fraction, seed, no_balance, skip_bad, key,
            workers, as_json):
    """Score, deduplicate, balance and split raw JSONL into train/val."""
    if not inputs and not more_inputs:
        _fail("no input: pass --input PATH (a JSONL file, glob or directory)")
    if val_size is not None and not _is_default(click.get_current_context(), "val_fraction"):
        given = "--train-size and --val-size set" if train_size is not None else "--val-size sets"
        _fail(f"--val-fraction cannot go with --val-size: {given} the split; give one of them")
    _check_output("--output", output_dir, directory=True)
    from your_ai import prepare as pipeline

    try:
        with writing(output_dir):
            report = pipeline.prepare(
                list(inputs) + list(more_inputs), output_dir, train_size=train_size, val_size=val_size,
                val_fraction=val_fraction, seed=seed, balance=not no_balance, skip_bad=skip_bad, key=key,
                workers=workers or pipeline.default_workers(), on_error=_report_bad_line,
                on_progress=_show_progress if sys.stderr.isatty() else None,
            )
        if sys.stderr.isatty():
            click.echo("\r\033[K", err=True, nl=False)
    except pipeline.PrepareError as error:
        _fail(str(error), code=1)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else pipeline.format_prepare_report(report))


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Output file (default: <first file>.dedup.jsonl).")
@click.option("--key", metavar="FIELD", help="Treat records with the same FIELD value as exact duplicates.")
@click.option("--skip-bad", is_flag=True, help="Leave bad lines out (they are still listed) instead of stopping.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def deduplicate(files, output, key, skip_bad, as_json):
    """Remove exact and near-duplicate documents from JSONL FILES."""
    _check_output("--output", output)
    from your_ai import prepare as pipeline

    try:
        report = pipeline.deduplicate(files, output, key=key, skip_bad=skip_bad, on_error=_report_bad_line)
    except pipeline.PrepareError as error:
        _fail(str(error), code=1)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else pipeline.format_deduplicate_report(report))


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG with the histograms and tier shares.")
@click.option("--alpha", type=float, help="Distrust alpha (2.3-3.0, default 2.7).")
@click.option("--skip-bad", is_flag=True, help="Leave bad lines out (they are still listed) instead of stopping.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes that score documents (default: all CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def analyze(files, plot, alpha, skip_bad, workers, as_json):
    """Report the authority / entropy / distrust distribution of JSONL FILES."""
    _check_output("--plot", plot)
    from your_ai import prepare as pipeline

    try:
        analysis = pipeline.analyze(files, alpha=alpha, skip_bad=skip_bad,
                                    workers=workers or pipeline.default_workers(), on_error=_report_bad_line)
    except pipeline.PrepareError as error:
        _fail(str(error), code=1)
    except ValueError as error:
        _fail(str(error))
    click.echo(pipeline.analysis_json(analysis) if as_json else pipeline.format_analysis(analysis))
    if plot:
        path = pipeline.plot_analysis(analysis, plot)
        click.echo(f"Wrote {path}", err=as_json)


# ---------------------------------------------------------------------------- scoring

@main.command()
@click.argument("text", required=False)
@click.option("--file", "file_path", type=click.Path(exists=True, dir_okay=False),
              help="Score every record of a JSONL file instead of TEXT.")
@click.option("--year", type=int, help="Year of the document (else inferred from the text).")
@click.option("--source", help="Source name, e.g. WHO.")
@click.option("--source-type", help="Source type, e.g. patent, lab_notebook, press_release, blog, encyclopedia.")
@click.option("--url", help="Where the document comes from.")
@click.option("--publisher", help="Publisher of the document.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (JSON Lines with --file).")
def score(text, file_path, year, source, source_type, url, publisher, as_json):
    """Score TEXT (or each record of --file) for authority weight and provenance entropy."""
    from rich.console import Console

    from your_ai import scoring

    metadata = {"year": year, "source": source, "source_type": source_type, "url": url, "publisher": publisher}
    # The terminal's width (or $COLUMNS); piped output without $COLUMNS: 200, no wrapping of the tables.
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
    if file_path is None:
        if text is None or not text.strip():
            raise click.UsageError("give the TEXT to score, or --file FILE.jsonl")
        result = scoring.score_document(text, metadata)
        if as_json:
            click.echo(json.dumps(result.to_dict(), indent=2))
        else:
            console.print(scoring.format_document_score(result))
        return
    if text is not None:
        raise click.UsageError("give either TEXT or --file, not both")
    given = [f"--{key.replace('_', '-')}" for key, value in metadata.items() if value is not None]
    if given:
        raise click.UsageError(f"{', '.join(given)} apply to TEXT only; with --file each record carries its own metadata")
    rows, errors = scoring.score_file(file_path)
    if errors:
        for error in errors:
            click.echo(str(error), err=True)
        _fail(f"{len(errors)} bad line(s) in {file_path}; nothing scored", code=1)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.to_dict()))
    else:
        console.print(scoring.format_file_scores(rows, file_path, console.width))


# ---------------------------------------------------------------------------- inference

_MODEL_HELP = ("Preset, hub id or model directory (default: the checkpoint's base model, else smollm2-135m, "
               "SmolLM2-135M-Instruct; `tiny` is a random-weight model for tests).")
_CHECKPOINT_HELP = "LoRA adapter folder (adapter_config.json + adapter_model.safetensors)."


def _load_inference_model(model, checkpoint, device, trust_remote_code):
    from your_ai.inference import load_for_inference

    try:
        return load_for_inference(model, checkpoint, device, trust_remote_code)
    except ValueError as error:  # an unusable --device
        _fail(str(error))


@main.command()
@click.option("--model", help=_MODEL_HELP)
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--checkpoint", type=click.Path(), help=_CHECKPOINT_HELP)
@click.option("--max-tokens", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.7, show_default=True,
              help="Sampling temperature; 0 decodes greedily.")
@click.option("--seed", type=int, help="Seed for sampling, to repeat an output.")
@click.option("--raw", is_flag=True, help="Send the prompt as plain text, not through the tokenizer's chat template.")
@click.option("--chat", is_flag=True, help="Require the chat template (already the default when the tokenizer "
              "has one; fails when it has none).")
@click.option("--compare", is_flag=True, help="Print the base model's and the fine-tuned model's output.")
@click.option("--device", help="cuda, mps or cpu (default: the best available).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own code to run.")
def generate(model, prompt, checkpoint, max_tokens, temperature, seed, raw, chat, compare, device, trust_remote_code):
    """Generate text from a model, optionally with a fine-tuned LoRA adapter.

    The prompt goes through the tokenizer's chat template as a user turn when it has one.
    """
    if compare and not checkpoint:
        raise click.UsageError("--compare needs --checkpoint DIR (the fine-tuned adapter to compare with the base)")
    if raw and chat:
        raise click.UsageError("--raw and --chat contradict each other; pass one of them")
    from your_ai import inference

    chat = False if raw else (True if chat else None)
    im = _load_inference_model(model, checkpoint, device, trust_remote_code)
    try:
        if compare:
            answers = _comparison(im, inference.compare(im, prompt, max_tokens, temperature, seed, chat), temperature)
        else:
            answers = {None: inference.generate(im, prompt, max_tokens, temperature, seed, chat)}
    except inference.InferenceError as error:
        _fail(str(error), code=1)
    _print_answers(im, answers, chat, temperature)


def _comparison(im, result, temperature: float) -> dict:
    """The base model's and the fine-tuned model's answers to one prompt, under their headings."""
    sampling = "greedy" if temperature == 0 else f"temperature {temperature}, seed {result.seed}"
    return {f"--- base model: {im.base_name} ({sampling}) ---": result.base,
            f"--- fine-tuned: {im.checkpoint} ({sampling}) ---": result.fine_tuned}


def _print_answers(im, answers: dict, chat, temperature: float) -> None:
    """Each answer under its heading (if any); an empty one gets a hint on stderr."""
    from your_ai import inference

    for heading, answer in answers.items():
        if heading:
            click.echo(heading)
        click.echo(answer)
        if not answer.strip():
            click.echo(inference.empty_answer_hint(im.tokenizer, chat, temperature), err=True)


@main.command()
@click.option("--model", help=_MODEL_HELP)
@click.option("--checkpoint", type=click.Path(), help=_CHECKPOINT_HELP)
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="JSONL file to score.")
@click.option("--max-seq-length", type=click.IntRange(min=2), default=1024, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device", help="cuda, mps or cpu (default: the best available).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own code to run.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with a score per record.")
def evaluate(model, checkpoint, data, max_seq_length, batch_size, device, trust_remote_code, as_json):
    """Cross-entropy and perplexity of a model (with an optional adapter) over a JSONL data set."""
    from your_ai import inference
    from your_ai.data import DataError, no_records, read_records

    try:
        read = read_records(data, collect_errors=True)
    except DataError as error:
        _fail(str(error), code=1)
    if not read.records and not read.errors:
        _fail(str(no_records(data)), code=1)
    if read.errors:
        for error in read.errors:
            click.echo(str(error), err=True)
        _fail(f"{len(read.errors)} bad line(s) in {data}; nothing evaluated", code=1)
    im = _load_inference_model(model, checkpoint, device, trust_remote_code)
    try:
        result = inference.evaluate_records(im, read.records, max_seq_length, batch_size)
    except (inference.InferenceError, DataError) as error:
        _fail(str(error), code=1)
    if as_json:
        payload = {"model": im.base_name, "checkpoint": str(im.checkpoint) if im.checkpoint else None,
                   "data": str(data), **result.to_dict()}
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(inference.format_eval_result(result, im, data))


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(), help=_CHECKPOINT_HELP)
@click.option("--output", required=True, type=click.Path(), help="Directory for the standalone model.")
@click.option("--model", help="Base model (default: the one the adapter names).")
@click.option("--force", is_flag=True, help="Replace a non-empty --output.")
@click.option("--device", help="cuda, mps or cpu (default: the best available).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own code to run.")
def export(checkpoint, output, model, force, device, trust_remote_code):
    """Merge a LoRA adapter into its base model and save a standalone model (safetensors)."""
    from your_ai import inference

    try:
        path = inference.merge_adapter(checkpoint, output, device, model=model, force=force,
                                       trust_remote_code=trust_remote_code)
    except ValueError as error:  # an unusable --device
        _fail(str(error))
    click.echo(f"Saved the merged model to {path}")


# ---------------------------------------------------------------------------- training

_POSITIVE = click.IntRange(min=1)


@main.command()
@click.option("--model", help="Preset, hub id or model directory (default: smollm2-135m, SmolLM2-135M-Instruct; "
              "`tiny` is a random-weight model for tests).")
@click.option("--data", type=click.Path(), help="JSONL file, or directory with train.jsonl (+ val.jsonl) "
              "(default: the built-in demo corpus).")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Where the adapter goes "
              "(default: models/distrust-<model>).")
@click.option("--batch-size", type=_POSITIVE, help="Samples per micro-batch (default: by model size and device, see the README).")
@click.option("--grad-accum", type=_POSITIVE, help="Micro-batches per optimizer step (default 1).")
@click.option("--lora-rank", type=_POSITIVE, help="LoRA rank (default: by model size and device).")
@click.option("--lora-alpha", type=float, help="LoRA alpha (default 2 x rank).")
@click.option("--lora-layers", type=_POSITIVE, help="Adapt the last N decoder layers (default: by model size and device; clamped to the model).")
@click.option("--learning-rate", type=float, help="Peak learning rate (default: by model size and device).")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Linear warmup steps before the cosine decay "
              "(default: 10% of the steps).")
@click.option("--max-steps", type=_POSITIVE, help="Optimizer steps (default: from the epochs over the data that the model size and device give).")
@click.option("--max-grad-norm", type=float, help="Gradient clipping norm (default 1.0).")
@click.option("--max-seq-length", type=click.IntRange(min=2), help="Truncate samples to N tokens (default: by model size and device).")
@click.option("--weight-decay", type=float, help="AdamW weight decay (default 0.01).")
@click.option("--distrust-mode", type=click.Choice(["weighted", "additive"]),
              help="weighted: per-sample CE weights from the distrust value (default); additive: CE + lambda * d, "
                   "which changes no gradient.")
@click.option("--alpha", type=float, help="Distrust alpha in [2.3, 3.0] (default 2.7).")
@click.option("--lambda-weight", type=float, help="Strength of the distrust term (default 1.0; [0, 1] when weighted).")
@click.option("--save-every", type=_POSITIVE, help="Checkpoint every N steps (default 500; tiny: 20).")
@click.option("--keep-last", type=_POSITIVE, help="Checkpoints to keep (default 3).")
@click.option("--save-best", is_flag=True, help="Keep the adapter with the lowest validation loss in best/ "
              "(needs val.jsonl).")
@click.option("--eval-every", type=_POSITIVE, help="Validation every N steps (default: --save-every).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --output-dir that loads.")
@click.option("--overwrite", is_flag=True, help="Start over in an --output-dir holding an earlier training run: "
              "its adapter, checkpoints, metrics and best/ are removed (a directory holding anything else is refused).")
@click.option("--max-memory", type=float, help="Stop (after saving a checkpoint, exit code 4) when the measured "
              "peak memory in GB goes above this (default: 80% of the device's memory); --step-mode auto "
              "chooses for this budget.")
@click.option("--memory-report-interval", type=_POSITIVE, help="Log metrics every N steps (default 10).")
@click.option("--metrics-file", type=click.Path(dir_okay=False), help="Metrics JSONL (default: <output-dir>/metrics.jsonl).")
@click.option("--no-tensorboard", is_flag=True, help="Do not write TensorBoard events to <output-dir>/runs.")
@click.option("--grad-checkpoint", is_flag=True, help="Recompute activations in the backward pass to save memory "
              "(the small step mode).")
@click.option("--step-mode", type=click.Choice(STEP_MODES),
              help="auto: the fastest step that fits --max-memory by the estimate (default); fast: nothing "
                   "recomputed; selective: the fewest layers recomputed that fit; small: every adapted layer "
                   "recomputed; plain: the Hugging Face forward through the full logits.")
@click.option("--seed", type=int, help="Seed for LoRA init and data order (default 42).")
@click.option("--device", help="cuda, mps or cpu (default: the best available).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own code to run.")
@click.option("--profile", "profile_file", type=click.Path(dir_okay=False),
              help="Apply a hardware profile saved by `your-ai optimize` (batch, rank, alpha, layers).")
@click.option("--auto-optimize", is_flag=True, help="Apply this model's saved hardware profile; "
              "run the quick optimize sweep first when there is none.")
@click.option("--gpus", type=_POSITIVE, help="Train data-parallel on N GPUs of this machine: runs this command under "
              "torchrun with N processes (with --device cpu: N CPU processes). --batch-size is per process.")
@click.option("--strategy", type=click.Choice(["auto", "ddp", "fsdp"]),
              help="Data-parallel strategy under torchrun or --gpus: ddp replicates the model on every GPU; "
                   "fsdp shards the base weights and the LoRA parameters over the processes; auto (default): "
                   "ddp when the model fits one GPU by the estimate, else fsdp.")
@click.option("--quantize", type=int, help="4: QLoRA, the base model's decoder linear weights in 4-bit NF4 "
              "(torchao) under full-precision LoRA adapters; about a quarter of the weights' memory.")
def train(no_tensorboard, profile_file, auto_optimize, gpus, **options):
    """Fine-tune a model with LoRA under the Empirical Distrust objective.

    With no --model and no --data it trains SmolLM2-135M-Instruct on the demo corpus (a few minutes on a CPU)
    and shows one prompt answered by the base and the fine-tuned model.
    Under `torchrun --nproc_per_node N -m your_ai train ...` (or with --gpus N) it trains data-parallel.
    """
    _check_output("--output-dir", options["output_dir"], directory=True)
    _check_output("--metrics-file", options["metrics_file"])
    from your_ai import distributed, optimize
    from your_ai import train as training
    from your_ai.checkpoints import CheckpointError
    from your_ai.data import DataError
    from your_ai.benchmark import Stopped
    from your_ai.models import ModelResolutionError
    from your_ai.quantize import QuantizationError

    if profile_file and auto_optimize:
        _fail("--profile and --auto-optimize both choose the hardware profile; give one of them")
    if gpus is not None and gpus > 1:
        _launch_processes(gpus, options["device"], "train")
    try:
        chosen = optimize.profile_for_training(
            options["model"], profile=profile_file, auto=auto_optimize, max_memory_gb=options["max_memory"],
            device=options["device"], say=click.echo,
        )
        if chosen:
            options, note = optimize.apply_profile(options, *chosen)
            click.echo(note)
    except ValueError as error:
        _fail(str(error), code=1)
    except Stopped as stop:  # SIGINT or SIGTERM during --auto-optimize's sweep: its fit test was killed
        _fail_stopped(stop)
    args = training.TrainingArgs(tensorboard=not no_tensorboard, **options)
    try:
        with writing(args.with_defaults().output_dir):
            result = training.train(args)
    except training.TrainingArgsError as error:
        _fail(str(error))
    except training.MemoryLimitExceeded as error:
        _fail(str(error), code=4)
    except (DataError, ModelResolutionError, CheckpointError, training.TrainingError,
            distributed.DistributedError, QuantizationError) as error:
        _fail(str(error), code=1)
    except ValueError as error:  # an unusable --device, a distrust input out of range
        _fail(str(error))
    if result.stopped_by:  # the run stops: a further Ctrl-C must not kill the interpreter while it exits
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
    if result.rank != 0:  # data-parallel: rank 0 reports
        sys.exit(result.exit_code)
    if result.already_finished:
        click.echo(f"{result.output_dir} already finished {result.steps} of {result.max_steps} steps; nothing to "
                   f"do. A run keeps its --max-steps: to train more, start a new run (--overwrite, or another "
                   f"--output-dir)")
        return
    if result.stopped_by:
        click.echo(f"Stopped by {result.stopped_by} at step {result.steps} of {result.max_steps}; checkpoint saved in "
                   f"{result.output_dir / 'checkpoints'}")
        click.echo(f"Continue with: {result.resume_command}")
        sys.exit(result.exit_code)
    if result.stopped_early:
        click.echo(f"Stopped at step {result.steps}; continue with --resume --output-dir {result.output_dir}")
        return
    click.echo(f"Trained {result.steps} steps in {result.elapsed_s:.1f} s; peak memory {result.peak_memory_gb:.2f} GB")
    click.echo(f"Adapter saved to {result.output_dir}")
    if options["data"] is None:  # the demo: show what the fine-tuning changed
        _show_demo_comparison(result.output_dir, options["device"])
    click.echo(f"Try it: your-ai generate --checkpoint {result.output_dir} --prompt \"...\" --compare")


def _show_demo_comparison(checkpoint, device) -> None:
    """The demo prompt answered greedily by the base model and by the adapter just trained."""
    from your_ai import inference
    from your_ai.train import DEMO_PROMPT

    im = _load_inference_model(None, checkpoint, device, False)
    try:
        result = inference.compare(im, DEMO_PROMPT, max_tokens=48, temperature=0.0, chat=None)
    except inference.InferenceError as error:
        _fail(str(error), code=1)
    click.echo(f"Prompt: {DEMO_PROMPT}")
    _print_answers(im, _comparison(im, result, 0.0), None, 0.0)


def _launch_processes(count: int, device: str | None, command: str) -> None:
    """Run this command again under torchrun on ``count`` processes (without ``--gpus``) and exit with its code;
    refused with check_gpus' message on a machine without ``count`` GPUs."""
    from your_ai import distributed

    try:
        distributed.check_gpus(count, device)
    except distributed.DistributedError as error:
        _fail(str(error))
    arguments = _given_arguments(click.get_current_context(), skip=("gpus",))
    process = subprocess.Popen(distributed.launch_command(count, arguments, command))
    received = []

    def pass_on(number, frame):  # a SIGTERM sent to this process alone reaches the processes it started
        received.append(number)
        process.send_signal(number)

    # Ctrl-C reaches every process of the terminal's group: this one waits while they save a checkpoint
    signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    signal.signal(signal.SIGTERM, pass_on)
    code = process.wait()
    sys.exit(128 + received[0] if received and code else code)


def _is_default(context: click.Context, name: str) -> bool:
    """The option ``name`` was not given on the command line (its value is the default)."""
    from click.core import ParameterSource

    return context.get_parameter_source(name) in (ParameterSource.DEFAULT, None)


def _given_arguments(context: click.Context, skip: tuple[str, ...] = ()) -> list[str]:
    """The options given on this command line (not defaults), as arguments for the same command again."""
    arguments: list[str] = []
    for parameter in context.command.params:
        name = parameter.name
        if name in skip or not isinstance(parameter, click.Option):
            continue
        if _is_default(context, name):
            continue
        value = context.params[name]
        flag = max(parameter.opts, key=len)
        if parameter.is_flag:
            if value:
                arguments.append(flag)
        elif value is not None:
            arguments += [flag, str(value)]
    return arguments


# ---------------------------------------------------------------------------- benchmark

def _fail_stopped(stop) -> None:
    """A benchmark or optimize run stopped by SIGINT/SIGTERM: one line, exit code 130/143."""
    click.echo(stop.line(), err=True)
    sys.exit(stop.exit_code)


def _fit_options(function):
    """The fit-test config options shared by ``benchmark`` and ``optimize``."""
    for option in reversed((
        click.option("--seq-length", type=click.IntRange(min=2), help="Tokens per sample (default 1024, or the "
                     "model's context if smaller)."),
        click.option("--grad-checkpoint", is_flag=True, help="Recompute activations in the backward pass."),
        click.option("--step-mode", type=click.Choice(STEP_MODES),
                     default="auto", show_default=True,
                     help="The training step of each fit test, as `train --step-mode`: auto is the fastest that "
                          "fits --max-memory by the estimate."),
        click.option("--device", help="cuda, mps or cpu (default: the best available)."),
        click.option("--synthetic", is_flag=True, help="Random-weight models of each preset's exact architecture: "
                     "measures the fit without downloading anything."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=1800, show_default=True,
                     help="Seconds per fit test before its process group is killed."),
        click.option("--gpus", type=_POSITIVE, default=1, show_default=True,
                     help="Run each fit test on N GPUs of this machine through torchrun (with --device cpu: N CPU "
                          "processes); the peak is per GPU. --batch-size is per process."),
        click.option("--strategy", type=click.Choice(["auto", "ddp", "fsdp"]), default="auto", show_default=True,
                     help="With --gpus: ddp replicates the model on every GPU, fsdp shards it; auto: ddp when the "
                          "model fits one GPU by the estimate, else fsdp."),
        click.option("--quantize", type=int, help="4: fit tests of QLoRA, the decoder linear weights in 4-bit NF4 "
                     "(as `train --quantize 4`)."),
    )):
        function = option(function)
    return function


@main.command()
@click.option("--max-memory", type=click.FloatRange(min=0, min_open=True),
              help="Budget in GB (default: 80% of the device's memory: GPU memory on CUDA, system memory elsewhere).")
@click.option("--models", help="Comma-separated models to test: presets, hub ids (org/name, from the local cache) "
              "and model directories, mixed (default: the five benchmark presets).")
@click.option("--cached", is_flag=True, help="Test every causal language model in the local Hugging Face cache "
              "($HF_HUB_CACHE) instead of the presets.")
@click.option("--single-model", help="Run one fit test in this process and print one BENCHMARK_RESULT line "
              "(what the benchmark runs in each subprocess).")
@click.option("--optimize", is_flag=True, help="Sweep batch x rank x layers for each model that passes.")
@click.option("--quick", is_flag=True, help="With --optimize: the quick grid (12 configs) instead of the full one (96).")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the results as JSON to FILE.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default="benchmark_log.jsonl", show_default=True,
              help="Append every event to this JSONL file.")
@click.option("--force", is_flag=True, help="Skip the safety checks (available memory, weights over the budget).")
@click.option("--batch-size", type=_POSITIVE, default=2, show_default=True, help="Fit-test batch size.")
@click.option("--lora-rank", type=_POSITIVE, default=64, show_default=True, help="Fit-test LoRA rank.")
@click.option("--lora-layers", type=_POSITIVE, default=16, show_default=True,
              help="Fit-test LoRA layers (the last N, clamped to the model).")
@click.option("--steps", type=_POSITIVE, default=5, show_default=True, help="Training steps per fit test.")
@_fit_options
def benchmark(max_memory, models, cached, single_model, optimize, quick, output, log_path, force, batch_size,
              lora_rank, lora_layers, steps, seq_length, grad_checkpoint, step_mode, device, synthetic, timeout, gpus,
              strategy, quantize):
    """Empirically test which models fit this machine, one subprocess per model.

    Exit code 0 when at least one model passed, 1 when none did.
    """
    from your_ai.probe import FitConfig

    try:
        config = FitConfig(batch_size=batch_size, lora_rank=lora_rank, lora_layers=lora_layers, steps=steps,
                           seq_length=seq_length, grad_checkpoint=grad_checkpoint, step_mode=step_mode,
                           quantize=quantize)
    except ValueError as error:  # --grad-checkpoint with --step-mode fast or selective, --quantize 8
        _fail(str(error))
    if single_model:
        from your_ai.probe import run_single

        if gpus > 1:  # the same fit test on N processes, under torchrun
            _launch_processes(gpus, device, "benchmark")
        sys.exit(run_single(single_model, max_memory, device, config, synthetic=synthetic, strategy=strategy))

    if quick and not optimize:
        _fail("--quick picks the quick grid of --optimize; add --optimize")
    if cached and (models or synthetic):
        _fail(f"--cached tests the models in the local cache; leave out {'--models' if models else '--synthetic'}")
    _check_output("--log", log_path)
    _check_output("--output", output)
    from your_ai.benchmark import Stopped, run_benchmark

    names = [name.strip() for name in models.split(",") if name.strip()] if models else None
    try:
        report = run_benchmark(
            names, max_memory_gb=max_memory, device=device, config=config, timeout_s=timeout, log_path=log_path,
            output=output, synthetic=synthetic, force=force, optimize=optimize, quick=quick, gpus=gpus,
            strategy=strategy, cached=cached,
        )
    except (KeyError, ValueError) as error:  # not a model name, an unusable --device or setting
        _fail(error.args[0] if error.args else str(error))
    except Stopped as stop:  # SIGINT or SIGTERM: the running fit test's process group was killed
        _fail_stopped(stop)
    sys.exit(0 if report["recommended"] else 1)


@main.command()
@click.option("--model", required=True, help="Preset, hub id or model directory.")
@click.option("--max-memory", type=click.FloatRange(min=0, min_open=True),
              help="Budget in GB (default: 80% of the device's memory).")
@click.option("--quick", is_flag=True, help="The quick grid: batch {2,4,8} x rank {64,128} x layers {16,24}.")
@click.option("--steps", type=_POSITIVE, default=15, show_default=True, help="Training steps per config.")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Where to save the hardware profile (default: <config dir>/profiles/<model>.json).")
@_fit_options
def optimize(model, max_memory, quick, steps, output, seq_length, grad_checkpoint, step_mode, device, synthetic,
             timeout, gpus, strategy, quantize):
    """Sweep batch size x LoRA rank x layers for the fastest config that fits; save a hardware profile.

    Exit code 0 when a config fits, 1 when none does or the model is not available.
    """
    _check_output("--output", output)
    from your_ai.benchmark import Stopped
    from your_ai.models import ModelResolutionError
    from your_ai.optimize import run_optimize

    try:
        outcome = run_optimize(model, max_memory_gb=max_memory, device=device, quick=quick, steps=steps,
                               timeout_s=timeout, synthetic=synthetic, seq_length=seq_length,
                               grad_checkpoint=grad_checkpoint, step_mode=step_mode, output=output, gpus=gpus,
                               strategy=strategy, quantize=quantize)
    except ModelResolutionError as error:
        _fail(str(error), code=1)
    except ValueError as error:
        _fail(str(error))
    except Stopped as stop:  # SIGINT or SIGTERM: the running fit test's process group was killed
        _fail_stopped(stop)
    sys.exit(0 if outcome["best"] else 1)


# ---------------------------------------------------------------------------- validation

def _progress_lines(description: str, total: int, started: float):
    """Progress for a log (stderr not a terminal): one line when a group of ``total`` items is done,
    with the time since ``started``."""
    import time

    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if done >= total:
            click.echo(f"{description}: {done}/{total} done, {time.monotonic() - started:.0f} s elapsed", err=True)

    return advance


@main.command()
@click.option("--model", help=_MODEL_HELP)
@click.option("--checkpoint", type=click.Path(), help=_CHECKPOINT_HELP)
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
@click.option("--device", help="cuda, mps or cpu (default: the best available).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own code to run.")
def validate(model, checkpoint, output, chart, compare, max_tokens, truthfulqa, limit, suite_path, batch_size,
             raw, device, trust_remote_code):
    """Run the censorship and authority-bias suite (and TruthfulQA MC1) on a model.

    Exits 0 when the run completes, whatever the scores; 1 for a bad file, model or checkpoint.
    """
    if compare and not checkpoint:
        raise click.UsageError("--compare needs --checkpoint DIR (the fine-tuned adapter to compare with the base)")
    from your_ai import validate as validation

    _check_output("--output", output)
    _check_output("--chart", chart)
    try:  # bad files fail before a model is loaded
        suite = validation.load_suite(suite_path)
        questions = validation.read_truthfulqa(truthfulqa) if truthfulqa else None
    except (validation.SuiteError, validation.TruthfulQAError) as error:
        _fail(str(error), code=1)
    import time

    from rich.console import Console
    from rich.progress import Progress

    from your_ai.inference import InferenceError

    im = _load_inference_model(model, checkpoint, device, trust_remote_code)
    started = time.monotonic()
    with Progress(console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        def progress(description, total):
            if not sys.stderr.isatty():
                return _progress_lines(description, total, started)
            task = bar.add_task(description, total=total)
            return lambda done: bar.advance(task, done)

        try:
            report = validation.validate(im, suite, max_tokens=max_tokens, chat=False if raw else None,
                                         limit=limit, batch_size=batch_size, truthfulqa=questions,
                                         truthfulqa_path=truthfulqa or "", compare=compare, progress=progress)
        except InferenceError as error:
            _fail(str(error), code=1)
    Console(width=None if sys.stdout.isatty() else 120).print(validation.summary_table(report))
    for line in validation.report_notes(report):
        click.echo(line)
    if output:
        click.echo(f"Wrote {validation.write_report(report, output)}")
    if chart:
        click.echo(f"Wrote {validation.plot_radar(report, chart)}")



if __name__ == "__main__":
    main()
