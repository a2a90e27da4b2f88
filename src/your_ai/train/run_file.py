"""The run file of a training run: its settings as YAML, under the names of ``your-ai train``'s options,
so that ``your-ai train --config FILE`` runs with them (docs/run-files.md).

A run writes its run file (``outputs.RUN_FILE``) into its output directory when it starts, with every
setting as the run uses it: the defaults filled in (``TrainingArgs.with_defaults``), and what the run
decides once the model and data are loaded (the step mode, packing, the steps of a packed run). A setting
left ``null`` takes its default where the file is run: ``device`` (the best available), ``max_memory``
(a share of the device's memory), ``metrics_file`` (in the output directory), ``strategy`` (auto) and
``quantize`` (none). What an invocation does with the output directory (``--resume``, ``--overwrite``) is
not a setting of the run and is not written.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from your_ai.files import write_text_atomic
from your_ai.train.args import TrainingArgs
from your_ai.train.outputs import RUN_FILE
from your_ai.train.plan import planned_args

NOT_SETTINGS = ("resume", "overwrite")  # what one invocation does with the output directory
HEADER = "# A your-ai run file: `your-ai {command} --config FILE` runs with these settings (docs/run-files.md).\n"


def run_settings(args: TrainingArgs, world_size: int) -> dict:
    """``args`` under the names of train's options (``tensorboard`` is ``--no-tensorboard``), with the
    number of training processes as ``gpus``."""
    settings = {}
    for key, value in asdict(args).items():
        if key == "tensorboard":
            settings["no_tensorboard"] = not value
        elif key not in NOT_SETTINGS:
            settings[key] = value
    settings["gpus"] = world_size
    return settings


def settings_text(settings: dict, command: str = "train") -> str:
    """Settings of ``command`` as the text of a run file: one ``name: value`` line each, in the order given."""
    import yaml

    return HEADER.format(command=command) + yaml.safe_dump(settings, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_run_file(output_dir: Path, args: TrainingArgs, world_size: int) -> Path:
    """The run file of a run of ``args`` on ``world_size`` processes, written atomically into ``output_dir``."""
    return write_text_atomic(Path(output_dir) / RUN_FILE, settings_text(run_settings(args, world_size)))


def planned_run_file(given: TrainingArgs, world_size: int) -> str:
    """The run file of a run of ``given`` as planned before anything is loaded (``plan.planned_args``): the
    step mode is still ``auto`` and packing ``null`` (on when it pays), which the run decides when it starts."""
    return settings_text(run_settings(planned_args(given), world_size))
