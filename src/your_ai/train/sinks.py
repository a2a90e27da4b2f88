"""Where a run's records go (``--report-to``): the metrics JSONL file always, and TensorBoard, Weights & Biases
(wandb) and Trackio as asked. Every destination is a sink fed the same records (``kind`` train or eval, the
step, the values) by ``Sinks``: nothing here builds a metric.

A tracker that fails while the run goes on (it cannot start, log or finish) prints one warning and is left
out; training never stops because a dashboard failed. wandb and trackio are optional extras
(``TRACKERS_INSTALL``), imported only when asked for.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

from your_ai.files import read_json_object, write_json_atomic
from your_ai.train.outputs import TENSORBOARD_DIR, TRACKERS_FILE

REPORT_TO = ("tensorboard", "wandb", "trackio")  # what --report-to takes (and "none")
TRACKERS = ("wandb", "trackio")  # the optional extras among them
TRACKERS_INSTALL = "pip install 'your-ai[trackers]'"
DEFAULT_PROJECT = "your-ai"
WANDB_FINISH_TIMEOUT_S = 120.0  # wandb stops uploading at the end of a run after this (WANDB_FINISH_TIMEOUT)


def parse_report_to(value: str | Iterable[str] | None, tensorboard: bool = True) -> tuple[str, ...]:
    """``--report-to``'s comma list as names (in the order given, each once); ``none`` for none, ``None`` for
    TensorBoard alone. ``tensorboard`` False (``--no-tensorboard``) leaves TensorBoard out. ``ValueError``
    naming the flag for a name it does not know."""
    if value is None:
        value = "tensorboard"
    words = value.split(",") if isinstance(value, str) else list(value)
    names = [str(word).strip().lower() for word in words if str(word).strip()]
    unknown = [name for name in names if name not in (*REPORT_TO, "none")]
    if unknown or not names:
        raise ValueError(f"--report-to {value!r}: takes a comma list of {', '.join(REPORT_TO)}, or none")
    if "none" in names and len(names) > 1:
        raise ValueError(f"--report-to {value!r}: none cannot be combined with other names")
    chosen = tuple(dict.fromkeys(name for name in names if name != "none"))
    return tuple(name for name in chosen if tensorboard or name != "tensorboard")


def check_installed(names: Iterable[str]) -> None:
    """``ValueError`` naming the flag and the install command for a tracker asked for that cannot be imported."""
    for name in names:
        if name not in TRACKERS:
            continue
        try:
            importlib.import_module(name)
        except ImportError as error:
            missing = isinstance(error, ModuleNotFoundError) and error.name == name
            why = "is not installed" if missing else f"cannot be imported ({error})"
            raise ValueError(f"--report-to {name}: the {name} package {why}; install it with {TRACKERS_INSTALL}") \
                from None


def numbers(values: dict) -> dict[str, float]:
    """The entries of ``values`` that are numbers (not flags, names or None)."""
    return {key: value for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def scalars(record: dict) -> dict[str, float]:
    """A record's numbers under the names the dashboards show: ``train/<name>`` for a training record,
    ``val/<name>`` for a validation record (``val_loss`` -> ``val/loss``)."""
    prefix = "train" if record["kind"] == "train" else "val"
    return {f"{prefix}/{key.removeprefix('val_')}": value for key, value in numbers(record).items() if key != "step"}


def warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr, flush=True)


class MetricsFile:
    """The metrics JSONL file: one line a record, appended (a resumed run continues the file)."""

    name = "the metrics file"

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a", encoding="utf-8")

    def record(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def summary(self, values: dict) -> None:
        pass  # training_summary.json holds it

    def close(self, exit_code: int) -> None:
        self.handle.close()


class TensorBoard:
    """TensorBoard events in ``<output-dir>/runs``; a resumed run purges the events after its checkpoint's step."""

    name = "tensorboard"

    def __init__(self, output_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR), purge_step=start_step or None)

    def record(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def summary(self, values: dict) -> None:
        pass

    def close(self, exit_code: int) -> None:
        self.writer.close()


class Wandb:
    """A Weights & Biases run: the settings as its config, the records as its history (at their step), the
    summary. Its id is kept in ``<output-dir>/trackers.json``: a resumed run continues the same wandb run.
    ``WANDB_MODE=offline`` keeps it on disk, in ``WANDB_DIR`` or else ``<output-dir>/wandb``."""

    name = "wandb"

    def __init__(self, output_dir: Path, config: dict, project: str | None, run_name: str | None, resumed: bool):
        import wandb

        run_id = read_trackers_file(output_dir).get("wandb", {}).get("id") if resumed else None  # None: a new one
        settings = {} if "WANDB_FINISH_TIMEOUT" in os.environ else {"finish_timeout": WANDB_FINISH_TIMEOUT_S}
        self.run = wandb.init(
            project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=run_name or os.environ.get("WANDB_NAME") or default_run_name(output_dir), id=run_id,
            resume="allow" if run_id else None,
            config=config, dir=None if os.environ.get("WANDB_DIR") else str(Path(output_dir).resolve()),
            settings=wandb.Settings(**settings),
        )
        write_trackers_file(output_dir, "wandb", {"id": self.run.id})

    def record(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def summary(self, values: dict) -> None:
        self.run.summary.update(values)

    def close(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)


class Trackio:
    """A Trackio run (local-first: ``TRACKIO_DIR``, by default ``$HF_HOME/trackio``): the settings as its
    config, the records as its metrics (at their step), the summary's numbers as ``summary/<name>`` at the
    last step. A resumed run continues the run of the same name."""

    name = "trackio"

    def __init__(self, output_dir: Path, config: dict, project: str | None, run_name: str | None, resumed: bool):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=project or DEFAULT_PROJECT, name=run_name or default_run_name(output_dir),
                                config=config,
                                resume="allow" if resumed else "never", embed=False, auto_log_gpu=False,
                                auto_log_cpu=False)

    def record(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def summary(self, values: dict) -> None:
        self.run.log({f"summary/{key}": value for key, value in numbers(values).items()}, step=values.get("steps"))

    def close(self, exit_code: int) -> None:
        self.trackio.finish()


def default_run_name(output_dir: Path) -> str:
    """The output directory's name (``distrust-smollm2-135m``), also for ``--output-dir .``."""
    return Path(output_dir).resolve().name


def read_trackers_file(output_dir: Path) -> dict:
    """What ``trackers.json`` keeps (the wandb run id); empty when there is none or it cannot be read."""
    try:
        return read_json_object(Path(output_dir) / TRACKERS_FILE)
    except (OSError, ValueError):
        return {}


def write_trackers_file(output_dir: Path, tracker: str, values: dict) -> None:
    write_json_atomic(Path(output_dir) / TRACKERS_FILE, {**read_trackers_file(output_dir), tracker: values})


class Sinks:
    """The sinks of one run, fed the same records. The metrics file's errors are the run's; a tracker that
    fails is closed, left out and named in one warning. Closed once, with the run's exit code (a ``with``
    block that raises closes them with 1, or 130 on Ctrl-C)."""

    def __init__(self, sinks: list, say: Callable[[str], None] = warn):
        self.sinks, self.say, self.closed = list(sinks), say, False

    def record(self, record: dict) -> None:
        self._each(lambda sink: sink.record(record), "log")

    def summary(self, values: dict) -> None:
        self._each(lambda sink: sink.summary(values), "log the summary")

    def close(self, exit_code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self._each(lambda sink: sink.close(exit_code), "finish")

    def _each(self, call: Callable, doing: str) -> None:
        for sink in list(self.sinks):
            if isinstance(sink, MetricsFile):
                call(sink)
                continue
            try:
                call(sink)
            except Exception as error:  # a dashboard's failure is never the run's
                self.sinks.remove(sink)
                self.say(f"{sink.name} could not {doing} ({type(error).__name__}: {error}); the run goes on "
                         f"without it (the metrics file has every record)")
                if doing != "finish":
                    _close_quietly(sink)

    def __enter__(self) -> "Sinks":
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.close(0 if kind is None else 130 if kind is KeyboardInterrupt else 1)


def _close_quietly(sink) -> None:
    try:
        sink.close(1)
    except Exception:
        pass


def open_sinks(metrics_path: Path, output_dir: Path, report_to: tuple[str, ...], config: dict, start_step: int,
               resumed: bool, project: str | None = None, run_name: str | None = None,
               say: Callable[[str], None] = warn) -> Sinks:
    """The metrics file and the sinks of ``report_to``; a tracker that cannot start is left out with one warning."""
    sinks: list = [MetricsFile(metrics_path)]
    for name in report_to:
        try:
            if name == "tensorboard":
                sinks.append(TensorBoard(output_dir, start_step))
            else:
                tracker = Wandb if name == "wandb" else Trackio
                sinks.append(tracker(output_dir, config, project, run_name, resumed))
        except Exception as error:  # a dashboard's failure is never the run's
            say(f"--report-to {name} could not start ({type(error).__name__}: {error}); the run goes on without it")
    return Sinks(sinks, say)
