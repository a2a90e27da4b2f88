"""lm-evaluation-harness tasks (``validate --lm-eval``) on the base and the fine-tuned model.

The tasks run through lm-eval's own Hugging Face model class (``HFLM``) around the model as
``inference.load_for_inference`` loaded it (its device and dtype, the default model from the local
cache), once with the adapter switched off (``base``) and once with it (``fine-tuned``), so the figures
are lm-eval's and comparable with published ones at the same few-shot count and metric.

``prepare_tasks`` runs before any model is loaded: it checks the names against lm-eval's task index
(plus the user's folders of task YAMLs), stops using the Hub when it cannot be reached (no waiting for
network timeouts), and builds every task, skipping those whose data are not available offline.
``run_tasks`` evaluates the prepared tasks; ``LmEvalResult`` is the ``lm_eval`` section of the
validation report and ``lm_eval_table`` its console table.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from your_ai.errors import UserError
from your_ai.hub_offline import offline_reason

LM_EVAL_INSTALL = "pip install 'your-ai[lm-eval]'"
BASE, FINE_TUNED = "base", "fine-tuned"  # the run labels, as in the validation suite's report
# datasets' builders for local files: their data never come from the Hub
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "imagefolder", "audiofolder"}


class LmEvalError(UserError):
    """An ``--lm-eval`` request that cannot run; the message names the flag or task and what to do."""


def check_installed() -> None:
    """``LmEvalError`` (one line with the install command) when lm-evaluation-harness is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise LmEvalError(f"--lm-eval needs lm-evaluation-harness, which is not installed: {LM_EVAL_INSTALL}",
                          exit_code=2)


def check_engine(engine: str | None) -> str:
    """The engine to load the model on for lm-eval: torch (lm-eval's model class is PyTorch's)."""
    if engine == "mlx":
        raise LmEvalError("--lm-eval runs on the torch engine (lm-eval's Hugging Face model class); "
                          "leave out --engine mlx", exit_code=2)
    return "torch"


def parse_task_names(text: str) -> list[str]:
    """The task names of ``--lm-eval a,b,c`` in order, each once."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise LmEvalError("--lm-eval needs task names, comma-separated (e.g. arc_easy,hellaswag)", exit_code=2)
    return names


# ---------------------------------------------------------------------------- preparing tasks

@dataclass(frozen=True)
class SkippedTask:
    task: str
    reason: str

    @property
    def message(self) -> str:
        return f"lm-eval task {self.task} skipped: {self.reason}"

    def to_dict(self) -> dict:
        return {"task": self.task, "reason": self.reason}


@dataclass
class PreparedTasks:
    """The requested tasks, built (their data loaded) or skipped, ready for ``run_tasks``."""

    names: list[str]  # as requested, in order
    built: dict[str, Any]  # name -> lm-eval Task, Group, or list of Tasks (a tag)
    skipped: list[SkippedTask]
    task_manager: Any
    include: list[str]
    offline: str | None  # why the Hub is not used; None when it is

    def objects(self) -> list:
        """The built Tasks and Groups, as ``simple_evaluate`` takes them."""
        found: list = []
        for name in self.names:
            item = self.built.get(name)
            found += item if isinstance(item, list) else [item] if item is not None else []
        return found


def quiet_lm_eval() -> None:
    """Keep lm-eval's and datasets' chatter (config defaults, data-preparation bars) off the console."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    # a data file it cannot parse: prepare_tasks reports it in its own line
    logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)
    import datasets

    datasets.disable_progress_bars()


def prepare_tasks(names: list[str], include: tuple | list = ()) -> PreparedTasks:
    """Check ``names`` against lm-eval's tasks, groups and tags (and those in the ``include`` folders) and
    build each, loading its data; a task whose data cannot be loaded (not in the datasets cache while
    offline) is skipped with the reason. ``LmEvalError`` for an unknown name or a task that cannot be built."""
    check_installed()
    folders = [str(Path(folder).expanduser().resolve()) for folder in include]
    for folder in folders:
        if not Path(folder).is_dir():
            raise LmEvalError(f"--lm-eval-include {folder}: not a folder (give a folder of lm-eval task YAMLs)",
                              exit_code=2)
    offline = offline_reason()
    quiet_lm_eval()
    from lm_eval.tasks import TaskManager

    if not hasattr(TaskManager, "load"):  # the task API of lm-eval 0.4.13
        raise LmEvalError(f"--lm-eval needs lm-evaluation-harness 0.4.13 or later (found {_lm_eval_version()}): "
                          f"pip install -U 'your-ai[lm-eval]'", exit_code=2)
    from datasets.exceptions import DatasetGenerationError

    manager = TaskManager(include_path=folders or None)
    known = manager.task_index
    for name in names:
        if name not in known:
            raise LmEvalError(unknown_task_line(name, manager.all_tasks, folders), exit_code=2)
    built: dict[str, Any] = {}
    skipped: list[SkippedTask] = []
    for name in names:
        try:
            built[name] = _build(manager, name)
        except OSError as error:  # data not available: not cached while offline, a missing file, ...
            skipped.append(SkippedTask(name, unavailable_reason(error, name, offline)))
        except DatasetGenerationError as error:  # data there but unreadable: a bad line in a JSONL file, ...
            raise LmEvalError(unreadable_data_line(name, error)) from None
        except task_errors() as error:
            raise LmEvalError(f"--lm-eval {name}: lm-eval cannot build this task: {_first_line(error)}") from None
    prepared = PreparedTasks(names, built, skipped, manager, folders, offline)
    try:
        manager.load(prepared.objects())  # one task asked for twice (by name and in a group) fails here
    except ValueError as error:
        raise LmEvalError(f"--lm-eval: {_first_line(error)}", exit_code=2) from None
    return prepared


def _build(manager, name: str):
    """The Task, Group or (for a tag) list of Tasks that ``name`` stands for, its data loaded."""
    loaded = manager.load([name])
    if name in loaded.get("groups", {}):
        return loaded["groups"][name]
    if name in loaded["tasks"]:
        return loaded["tasks"][name]
    return list(loaded["tasks"].values())


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def unknown_task_line(name: str, known: list[str], folders: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    if folders:
        return (f"--lm-eval {name}: no such task, group or tag in lm-eval or in {', '.join(folders)}; {hint}"
                f"`lm-eval ls tasks` lists lm-eval's; a YAML that lm-eval cannot read is left out: check its syntax")
    return (f"--lm-eval {name}: no such lm-eval task, group or tag; {hint}"
            f"`lm-eval ls tasks` lists them; your own task YAMLs go in a folder given with --lm-eval-include")


def task_errors() -> tuple[type[Exception], ...]:
    """What lm-eval raises for a task its YAML describes wrongly (a bad field, split or template)."""
    from jinja2 import TemplateError

    return ValueError, TypeError, KeyError, IndexError, ImportError, TemplateError


def _first_line(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return f"no {error.args[0]!r} (a split, column or field that the task's YAML names?)"
    if isinstance(error, IndexError):
        return f"{error} (a target index past the list of choices, in the data or doc_to_target?)"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def unreadable_data_line(name: str, error: BaseException) -> str:
    """One line for a task whose data files are there but cannot be read (``datasets`` failed to parse them)."""
    cause = error.__cause__ or error
    files = _data_files(error)
    where = f" ({files})" if files else ""
    return (f"--lm-eval {name}: its data{where} cannot be read: {_first_line(cause)}; "
            f"fix the file, or the data files the task's YAML names")


def _data_files(error: BaseException) -> str:
    """The ``data_files`` of the lm-eval Task whose loading raised ``error``, as text ("" when none)."""
    from lm_eval.api.task import Task

    files: Any = None
    trace = error.__traceback__
    while trace is not None:
        owner = trace.tb_frame.f_locals.get("self")
        if isinstance(owner, Task):
            files = (getattr(owner.config, "dataset_kwargs", None) or {}).get("data_files")
        trace = trace.tb_next
    if isinstance(files, dict):
        files = list(files.values())
    if isinstance(files, (list, tuple)):
        return ", ".join(str(f) for f in files)
    return str(files) if files else ""


def failing_dataset(error: BaseException) -> tuple[str, str, str | None] | None:
    """The task whose data failed to load, and its data set (path, configuration), read from the frames
    of the error's traceback (lm-eval's Task loading its data)."""
    from lm_eval.api.task import Task

    found = None
    trace = error.__traceback__
    while trace is not None:
        owner = trace.tb_frame.f_locals.get("self")
        if isinstance(owner, Task) and getattr(owner, "DATASET_PATH", None):
            found = (owner.config.task, owner.DATASET_PATH, owner.DATASET_NAME)
        trace = trace.tb_next
    return found


def unavailable_reason(error: OSError, name: str, offline: str | None) -> str:
    """Why a task's data could not be loaded, and what to do about it."""
    dataset = failing_dataset(error)
    if dataset is None or offline is None or dataset[1] in LOCAL_BUILDERS or Path(dataset[1]).exists():
        return f"its data could not be loaded: {_first_line(error)}"
    task, path, config = dataset
    shown = f"{path}, {config}" if config else path
    call = f"python -c \"import datasets; datasets.load_dataset({path!r}" + (f", {config!r}" if config else "") + ")\""
    if task == name:
        missing, download = f"its data ({shown}) are", f"download them once on a connected machine with {call}"
    else:  # a group or tag: the first of its tasks found without data
        missing = f"the data of {task}, one of its tasks, ({shown}) are"
        download = f"download the data of each of its tasks once on a connected machine, e.g. {call},"
    return (f"{missing} not in the datasets cache and {offline}; {download} and copy the datasets cache here, "
            f"or set HF_DATASETS_CACHE to a cache that holds them")


# ---------------------------------------------------------------------------- running and results

def _number(value) -> float | None:
    """A metric value or standard error as a float; None for lm-eval's "N/A" and for NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _json_safe(value):
    """A sample's field as JSON: tuples as lists, numpy scalars as numbers, NaN as null, anything else as text."""
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # a numpy scalar
    if isinstance(value, float):
        return _number(value)
    if value is None or isinstance(value, (str, bool, int)):
        return value
    return str(value)


def metric_values(row: dict) -> dict[str, tuple[float | None, float | None]]:
    """One task's row of lm-eval results as metric -> (value, standard error); lm-eval's keys are
    ``metric,filter``, shown as ``metric`` for the plain filter ``none``."""
    found = {}
    for key, value in row.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filter_name = key.split(",", 1)
        shown = metric if filter_name == "none" else key
        found[shown] = (_number(value), _number(row.get(f"{metric}_stderr,{filter_name}")))
    return found


def _sample_count(results: dict, task: str, which: str = "effective") -> int | None:
    """The samples a task was scored on (``effective``) or holds (``original``); a group's, summed over its tasks."""
    subtasks = results.get("group_subtasks", {}).get(task)
    if subtasks:
        counts = [_sample_count(results, subtask, which) for subtask in subtasks]
        return sum(count for count in counts if count is not None)
    return results.get("n-samples", {}).get(task, {}).get(which)


@dataclass
class LmEvalResult:
    """lm-eval's results for each run (``base``, and ``fine-tuned`` with an adapter), and the skipped tasks."""

    settings: dict
    runs: dict[str, dict]  # label -> simple_evaluate's results
    skipped: list[SkippedTask] = field(default_factory=list)
    version: str = ""

    @property
    def labels(self) -> list[str]:
        return list(self.runs)

    def task_names(self) -> list[str]:
        first = next(iter(self.runs.values()), {})
        return list(first.get("results", {}))

    def metrics(self, task: str) -> dict[str, dict]:
        """metric -> {label: {"value", "stderr"}, "higher_is_better", "difference" (fine-tuned - base)}."""
        out: dict[str, dict] = {}
        for label, results in self.runs.items():
            better = results.get("higher_is_better", {}).get(task, {})
            for metric, (value, stderr) in metric_values(results["results"].get(task, {})).items():
                entry = out.setdefault(metric, {"higher_is_better": better.get(metric.split(",")[0])})
                entry[label] = {"value": value, "stderr": stderr}
        for entry in out.values():
            pair = [entry.get(label, {}).get("value") for label in (BASE, FINE_TUNED)]
            if None not in pair:
                entry["difference"] = pair[1] - pair[0]
        return out

    def task_dict(self, task: str) -> dict:
        results = next(iter(self.runs.values()))
        return {"num_fewshot": results.get("n-shot", {}).get(task), "samples": _sample_count(results, task),
                "samples_in_task": _sample_count(results, task, "original"),
                "group": bool(results.get("group_subtasks", {}).get(task)), "metrics": self.metrics(task)}

    def samples(self, label: str) -> dict[str, list[dict]]:
        """Every scored sample of a run: its doc id, target, lm-eval's (filtered) responses and metrics."""
        results = self.runs[label]
        out = {}
        for task, rows in results.get("samples", {}).items():
            names = [m.split(",")[0] for m in metric_values(results["results"].get(task, {}))]
            out[task] = [{"doc_id": row.get("doc_id"), "target": _json_safe(row.get("target")),
                          "responses": _json_safe(row.get("filtered_resps")),
                          **{name: _json_safe(row[name]) for name in names if name in row}} for row in rows]
        return out

    def to_dict(self) -> dict:
        return {"lm_eval_version": self.version, "settings": self.settings,
                "tasks": {task: self.task_dict(task) for task in self.task_names()},
                "skipped": [skip.to_dict() for skip in self.skipped],
                "samples": {label: self.samples(label) for label in self.labels}}


def run_tasks(im, prepared: PreparedTasks, *, limit: int | None = None, num_fewshot: int | None = None,
              batch_size: int = 32, announce=None) -> LmEvalResult:
    """Evaluate the prepared tasks with lm-eval on ``im`` as loaded, the adapter switched off (``base``) and,
    when ``im`` has one, on (``fine-tuned``); ``announce(line)`` hears as each run starts and ends."""
    import time

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    quiet_lm_eval()
    settings = {"limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size, "chat_template": False,
                "include": prepared.include, "offline": prepared.offline, "device": str(im.device),
                "dtype": str(getattr(im.model, "dtype", "")).replace("torch.", "")}
    result = LmEvalResult(settings, {}, list(prepared.skipped), _lm_eval_version())
    tasks = prepared.objects()
    if not tasks:
        return result
    model = HFLM(pretrained=im.model, tokenizer=im.tokenizer, batch_size=batch_size)
    for label in ([BASE, FINE_TUNED] if im.has_adapter else [BASE]):
        started = time.monotonic()
        if announce:
            announce(f"{label}: lm-eval: {', '.join(prepared.built)}")
        switch = im.model.disable_adapter() if label == BASE and im.has_adapter else nullcontext()
        try:
            with switch:
                result.runs[label] = simple_evaluate(model, tasks=tasks, task_manager=prepared.task_manager,
                                                     limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
                                                     log_samples=True)
        except task_errors() as error:
            hint = (f" (--lm-eval-fewshot {num_fewshot} asks for more examples than the task has to draw from)"
                    if num_fewshot and "larger than population" in str(error) else "")
            raise LmEvalError(f"--lm-eval: lm-eval failed on {', '.join(prepared.built)}: "
                              f"{_first_line(error)}{hint}") from None
        if announce:
            announce(f"{label}: lm-eval: done, {time.monotonic() - started:.0f} s elapsed")
    return result


def _cell(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    stderr = entry.get("stderr")
    return f"{entry['value']:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def lm_eval_table(result: LmEvalResult, title: str):
    """A rich table: per task and metric, the few-shot count, the samples, each run's value ± standard
    error and (with both runs) the difference; a skipped task shows as skipped."""
    from rich.table import Table

    table = Table(title=f"lm-eval: {title}")
    for name in ("Task", "Metric", "Shots", "Samples", *result.labels):
        table.add_column(name, justify="left" if name in ("Task", "Metric") else "right")
    both = len(result.labels) == 2
    if both:
        table.add_column("Difference", justify="right")
    for task in result.task_names():
        details = result.task_dict(task)
        for metric, entry in details["metrics"].items():
            row = [task, metric, str(details["num_fewshot"] if details["num_fewshot"] is not None else "-"),
                   str(details["samples"] or "-"), *(_cell(entry.get(label)) for label in result.labels)]
            if both:
                row.append(f"{entry['difference']:+.4f}" if "difference" in entry else "-")
            table.add_row(*row)
    for skip in result.skipped:
        table.add_row(skip.task, "skipped", *[""] * (2 + len(result.labels) + both))
    return table
