"""The ``your-ai`` command line: each command parses its flags and calls one library function."""

from __future__ import annotations

import json
import sys

import click

from your_ai import __version__

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["-h", "--help"]}


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _not_available_yet(command: str) -> None:
    _fail(f"'{command}' is not available yet in this version of your-ai.", code=3)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="your-ai")
def main() -> None:
    """Fine-tune open LLMs with LoRA under the Empirical Distrust objective,
    and find out empirically which models and settings fit your hardware."""


# ---------------------------------------------------------------------------- hardware

@main.command()
@click.option("--output", type=click.Path(dir_okay=False), help="Where to save the profile (default: config dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def setup(output, as_json):
    """Detect this machine's hardware and save a hardware profile."""
    from your_ai import hardware

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
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def recommend(memory, batch_size, lora_rank, lora_layers, max_seq_length, as_json):
    """List the presets whose estimated LoRA training memory fits 80% of MEMORY."""
    from your_ai import recommend as recommend_module

    if memory is not None and memory <= 0:
        _fail(f"--memory={memory} must be a positive number of GB")
    report = recommend_module.recommend_presets(
        memory_gb=memory,
        batch_size=batch_size,
        lora_rank=lora_rank,
        lora_layers=lora_layers,
        seq_length=max_seq_length,
    )
    click.echo(json.dumps(report, indent=2) if as_json else recommend_module.format_recommendation(report))


# ---------------------------------------------------------------------------- not built yet

def _placeholder(name: str, help_text: str) -> None:
    @main.command(name=name, help=help_text, context_settings=PASS_THROUGH, add_help_option=True)
    @click.pass_context
    def command(ctx):
        _not_available_yet(name)


for _name, _help in (
    ("score", "Score text for authority weight and provenance entropy. (not available yet)"),
    ("prepare", "Score, deduplicate, balance and split raw JSONL into train/val. (not available yet)"),
    ("deduplicate", "Remove exact and near-duplicate documents from JSONL files. (not available yet)"),
    ("analyze", "Report the authority / entropy distribution of a JSONL data set. (not available yet)"),
    ("train", "Fine-tune a model with LoRA under the Empirical Distrust objective. (not available yet)"),
    ("generate", "Generate text from a model, optionally with a fine-tuned adapter. (not available yet)"),
    ("evaluate", "Cross-entropy and perplexity of a model over a data set. (not available yet)"),
    ("export", "Merge a LoRA adapter into a standalone model. (not available yet)"),
    ("benchmark", "Empirically test which model presets fit this machine. (not available yet)"),
    ("optimize", "Sweep batch size x LoRA rank x layers for the fastest config that fits. (not available yet)"),
    ("validate", "Run the authority-bias and censorship evaluation suite. (not available yet)"),
):
    _placeholder(_name, _help)


if __name__ == "__main__":
    main()
