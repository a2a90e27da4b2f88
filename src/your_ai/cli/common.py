"""What the commands share: failing with one line, checking output paths, relaunching under torchrun,
loading a model for inference, progress lines, and the options (and help) several commands take."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from typing import NoReturn

import click

from your_ai.errors import UserError
from your_ai.files import check_writable
from your_ai.hardware import ENGINES

CHECKPOINT_HELP = ("The fine-tuned LoRA adapter: a training run's output directory, one of its checkpoints or best/ "
                   "(a folder with adapter_config.json + adapter_model.safetensors).")
MODEL_KINDS = "preset, hub id (from the local cache), model directory or GGUF file"
MODEL_HELP = (f"Model: {MODEL_KINDS} (default: the checkpoint's base model, else smollm2-135m, SmolLM2-135M-Instruct; "
              "`tiny` is a random-weight model for tests).")
DEVICE_HELP = "cuda, mps or cpu (default: the best available)."
TRUST_REMOTE_CODE_HELP = "Allow the model's own code to run."
POSITIVE = click.IntRange(min=1)
SEED = click.IntRange(min=0, max=2**64 - 1)  # what both engines' random generators take


class NonNegativeFloat(click.FloatRange):
    """A number >= 0; ``nan``, which ``FloatRange`` lets through, is refused too."""

    def __init__(self):
        super().__init__(min=0.0)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number >= 0.", param, ctx)
        return number


ALPHA_OPTION = click.option("--alpha", type=float, help="Distrust alpha in [2.3, 3.0] (default 2.7).")
ENGINE_OPTION = click.option(
    "--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
    help="torch, or mlx (Apple's MLX, on Metal; the CPU elsewhere); auto: mlx on Apple Silicon when MLX is installed, "
         "else torch.")


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with ``Error: message`` and exit code ``code`` (shown by ``_Commands``); a message about
    a flag whose value a run file gave names the file and line first."""
    from your_ai.cli.run_file import where_given

    raise UserError(where_given(message), exit_code=code)


def refuse_empty(flag: str, path: str | None) -> None:
    """Refuse a path flag given as an empty string (an unset shell variable, say), which would mean the current
    folder or nothing."""
    if path is not None and not path.strip():
        fail(f"{flag} is empty; give the path to write")


def check_output(flag: str, path: str | None, directory: bool = False) -> None:
    """Refuse a flag's output path that is empty or cannot be written (``files.check_writable``), before any work."""
    refuse_empty(flag, path)
    if path:
        check_writable(path, directory=directory, shown_as=f"{flag} {path}")


def load_inference_model(model, checkpoint, device, trust_remote_code, engine=None):
    from your_ai.eval.inference import load_for_inference

    try:
        return load_for_inference(model, checkpoint, device, trust_remote_code, engine)
    except ValueError as error:  # an unusable --device or --engine
        fail(str(error))


def launch_processes(count: int, device: str | None, command: str) -> None:
    """Run this command again under torchrun on ``count`` processes (without ``--gpus``; the options a run file
    gave pass as flags) and exit with its code; refused with check_gpus' message on a machine without ``count``
    GPUs."""
    from your_ai.train import launch as distributed
    try:
        distributed.check_gpus(count, device)
    except distributed.DistributedError as error:
        fail(str(error))
    arguments = given_arguments(click.get_current_context(), skip=("gpus",))
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


def is_default(context: click.Context, name: str) -> bool:
    """The option ``name`` was given neither on the command line nor by a run file (its value is the default)."""
    from click.core import ParameterSource

    return context.get_parameter_source(name) in (ParameterSource.DEFAULT, None)


def given_arguments(context: click.Context, skip: tuple[str, ...] = ()) -> list[str]:
    """The options given on this command line or by its run file (not defaults), as arguments for the same
    command again (``--config`` itself is not repeated: its values are)."""
    arguments: list[str] = []
    for parameter in context.command.params:
        name = parameter.name
        if name in skip or name not in context.params or not isinstance(parameter, click.Option):
            continue
        if is_default(context, name):
            continue
        value = context.params[name]
        flag = max(parameter.opts, key=len)
        if parameter.is_flag:
            if value:
                arguments.append(flag)
            elif parameter.secondary_opts:  # --no-packing
                arguments.append(max(parameter.secondary_opts, key=len))
        elif value is not None:
            arguments += [flag, str(value)]
    return arguments


def fail_stopped(stop) -> None:
    """A benchmark or optimize run stopped by SIGINT/SIGTERM: one line, exit code 130/143."""
    click.echo(stop.line(), err=True)
    sys.exit(stop.exit_code)


def progress_lines(description: str, total: int, started: float):
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


def comparison(im, result, temperature: float) -> dict:
    """The base model's and the fine-tuned model's answers to one prompt, under their headings."""
    sampling = "greedy" if temperature == 0 else f"temperature {temperature}, seed {result.seed}"
    return {f"--- base model: {im.base_name} ({sampling}) ---": result.base,
            f"--- fine-tuned: {im.checkpoint} ({sampling}) ---": result.fine_tuned}


def print_answers(im, answers: dict, chat, temperature: float) -> None:
    """Each answer under its heading (if any); an empty one gets a hint on stderr."""
    from your_ai.eval import inference
    for heading, answer in answers.items():
        if heading:
            click.echo(heading)
        click.echo(answer)
        if not answer.strip():
            click.echo(inference.empty_answer_hint(im.tokenizer, chat, temperature), err=True)


