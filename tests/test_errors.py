"""User-caused failures end with one `Error:` line naming the file or flag, exit code 1 or 2, and no traceback
(real subprocesses, real broken model folders, real unwritable, read-only and full file systems)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).parents[1] / "src" / "your_ai" / "assets" / "demo_corpus.jsonl"


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "your_ai", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def error_line(result, *names) -> str:
    """The one stderr line of a failed command, after checking the exit code, the absence of a traceback,
    and that it names every one of ``names``."""
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------- broken model folders

def _write_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _pickled_only(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")


BROKEN_MODELS = {  # what is broken: (how to break a copy of the tiny model, the file named, words of the message)
    "invalid config.json": (lambda d: (d / "config.json").write_text('{"model_type": "llama",'),
                            "config.json", "not valid JSON"),
    "negative hidden_size": (lambda d: _write_config(d, hidden_size=-4), "config.json", "hidden_size=-4"),
    "truncated weights": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors",
                          "not a complete safetensors file"),
    "only pickled weights": (_pickled_only, "", "pytorch_model.bin (a pickle, which your-ai never loads); convert"),
}


def broken_model(tiny_model_dir: Path, where: Path, what: str) -> tuple[Path, Path, str]:
    """A copy of the tiny model broken as ``what`` says; (folder, the file the message names, its words)."""
    folder = where / "model"
    shutil.copytree(tiny_model_dir, folder)
    breaks, file, words = BROKEN_MODELS[what]
    breaks(folder)
    return folder, folder / file if file else folder, words


@pytest.mark.slow
@pytest.mark.parametrize("what", BROKEN_MODELS)
def test_a_broken_model_folder_is_one_line_naming_the_file(tiny_model_dir, tmp_path, what):
    folder, named, words = broken_model(tiny_model_dir, tmp_path, what)
    result = run_cli("generate", "--model", folder, "--prompt", "hi", "--max-tokens", "1")
    assert result.returncode == 1
    error_line(result, named, words)


def test_the_tokenizer_names_a_broken_config_or_tokenizer_file(tiny_model_dir, tmp_path):
    """``train`` loads the tokenizer first: a broken config.json is named as such there too."""
    from your_ai.model.errors import ModelFileError
    from your_ai.model.load import load_tokenizer
    from your_ai.model.resolve import resolve_model

    folder, named, words = broken_model(tiny_model_dir, tmp_path, "negative hidden_size")
    with pytest.raises(ModelFileError, match=f"{named}: {words}"):
        load_tokenizer(resolve_model(str(folder)))
    _write_config(folder, hidden_size=256)
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelFileError, match=f"{folder}: its tokenizer cannot be loaded"):
        load_tokenizer(resolve_model(str(folder)))


@pytest.mark.slow
def test_the_fit_test_of_a_broken_model_reports_an_error_result(tiny_model_dir, tmp_path):
    from your_ai.fit.result import parse_result_line

    folder, named, words = broken_model(tiny_model_dir, tmp_path, "truncated weights")
    result = run_cli("benchmark", "--single-model", folder, "--steps", "1", "--device", "cpu")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    fit = parse_result_line(result.stdout).to_dict()
    assert fit["status"] == "error" and f"{named}: {words}" in fit["error"]


def test_weights_of_other_sizes_than_the_config_name_the_folder(tiny_model_dir, tmp_path):
    from your_ai.model.errors import ModelFileError
    from your_ai.model.load import load_model
    from your_ai.model.resolve import resolve_model

    folder, _, _ = broken_model(tiny_model_dir, tmp_path, "negative hidden_size")
    _write_config(folder, hidden_size=128)  # a valid size, but not the weights' 256
    with pytest.raises(ModelFileError, match=f"{folder}: the weights do not have the sizes its config.json gives"):
        load_model(resolve_model(str(folder)))


# ---------------------------------------------------------------------------- outputs that cannot be written

@pytest.fixture
def blocked(tmp_path) -> Path:
    """A regular file: any path under it cannot be created (ENOTDIR)."""
    file = tmp_path / "a-file"
    file.write_text("not a directory\n")
    return file


# Each command with an output under a regular file, and an input that would fail if it were read first:
# the output is checked before any work.
UNWRITABLE = {
    "setup --output": ["setup", "--output", "{out}/profile.json"],
    "prepare --output": ["prepare", "--input", "{missing}", "--output", "{out}/prepared"],
    "deduplicate --output": ["deduplicate", "{missing}", "--output", "{out}/dedup.jsonl"],
    "analyze --plot": ["analyze", "{missing}", "--plot", "{out}/analysis.png"],
    "validate --output": ["validate", "--model", "{missing}", "--output", "{out}/validation.json"],
    "validate --chart": ["validate", "--model", "{missing}", "--chart", "{out}/radar.png"],
    "benchmark --log": ["benchmark", "--models", "no-such-preset", "--log", "{out}/log.jsonl"],
    "benchmark --output": ["benchmark", "--models", "no-such-preset", "--log", "{tmp}/log.jsonl",
                           "--output", "{out}/results.json"],
    "optimize --output": ["optimize", "--model", "{missing}", "--output", "{out}/profile.json"],
    "train --output-dir": ["train", "--model", "{missing}", "--output-dir", "{out}/run"],
    "train --metrics-file": ["train", "--model", "{missing}", "--output-dir", "{tmp}/run",
                             "--metrics-file", "{out}/metrics.jsonl"],
    "export --output": ["export", "--checkpoint", "{missing}", "--output", "{out}/merged"],
}


def _arguments(template: list[str], out: Path, tmp_path: Path) -> list[str]:
    return [a.format(out=out, missing=tmp_path / "missing", tmp=tmp_path) for a in template]


@pytest.mark.slow
@pytest.mark.parametrize("case", UNWRITABLE)
def test_an_output_under_a_regular_file_fails_before_the_work(case, blocked, tmp_path):
    result = run_cli(*_arguments(UNWRITABLE[case], blocked, tmp_path))
    flag = case.split()[1]
    line = error_line(result, blocked, "is a file, not a directory")
    assert flag in line or case == "export --output"  # export names the folder it would create
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written, nothing read


def test_debug_shows_the_traceback(blocked):
    for debug in (["--debug"], []):
        result = run_cli(*debug, "setup", "--output", blocked / "profile.json",
                         env={"YOUR_AI_DEBUG": "0" if debug else "1"})
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "OutputError: cannot write" in result.stderr


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write to: a read-only tmpfs for root (whom permissions do not stop), a 0555
    directory for anyone else."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with _mounted(folder, "ro,size=64k"):
        yield folder


class _mounted:
    """A tmpfs mounted at ``folder`` for the block; the test is skipped where mounting is not allowed."""

    def __init__(self, folder: Path, options: str):
        self.folder, self.options = folder, options

    def __enter__(self):
        mount = shutil.which("mount")
        if os.geteuid() != 0 or mount is None:
            pytest.skip("mounting a small tmpfs needs root")
        done = subprocess.run([mount, "-t", "tmpfs", "-o", self.options, "tmpfs", str(self.folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def __exit__(self, *exc):
        subprocess.run([shutil.which("umount"), str(self.folder)], check=True)


READ_ONLY = {
    "setup --output": ["setup", "--output", "{out}/profile.json"],
    "validate --output": ["validate", "--model", "{missing}", "--output", "{out}/validation.json"],
    "export --output": ["export", "--checkpoint", "{missing}", "--output", "{out}/merged"],
    "prepare --output": ["prepare", "--input", "{missing}", "--output", "{out}/prepared"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", READ_ONLY)
def test_an_output_on_a_read_only_directory_fails_before_the_work(case, read_only_dir, tmp_path):
    result = run_cli(*_arguments(READ_ONLY[case], read_only_dir, tmp_path))
    reason = "read-only file system" if os.geteuid() == 0 else "permission denied"
    error_line(result, read_only_dir, reason)
    assert list(read_only_dir.iterdir()) == []


@pytest.fixture
def full_dir(tmp_path):
    """A directory on a file system with no space left (a small tmpfs, filled up)."""
    folder = tmp_path / "full"
    folder.mkdir()
    with _mounted(folder, "size=256k"):
        with open(folder / "filler", "wb", buffering=0) as handle:
            with pytest.raises(OSError) as full:
                while True:
                    handle.write(b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
        yield folder


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from test_inference import make_adapter

    return make_adapter(tmp_path_factory.mktemp("errors-adapter") / "adapter")


DISK_FULL = {  # written after the work, when the disk is found full
    "setup --output": (["setup", "--output", "{out}/profile.json"], "{out}/profile.json"),
    "prepare --output": (["prepare", "--input", str(DEMO), "--output", "{out}/prepared"], "{out}/prepared"),
    "benchmark --log": (["benchmark", "--synthetic", "--models", "tiny", "--log", "{out}/log.jsonl"],
                        "{out}/log.jsonl"),
    "export --output": (["export", "--checkpoint", "{adapter}", "--output", "{out}/merged"], "{out}/merged"),
    "export --format gguf": (["export", "--checkpoint", "{adapter}", "--output", "{out}/merged.gguf", "--format",
                              "gguf"], "{out}/merged.gguf"),
    "train --output-dir": (["train", "--model", "tiny", "--output-dir", "{out}/run", "--max-steps", "1"],
                           "{out}/run/run.yaml"),  # the run file, written first
}


@pytest.mark.slow
@pytest.mark.parametrize("case", DISK_FULL)
def test_a_full_disk_is_one_line_naming_the_output(case, full_dir, tmp_path, request):
    template, named = DISK_FULL[case]
    adapter = request.getfixturevalue("adapter_dir") if case.startswith("export") else None
    values = {"out": full_dir, "adapter": adapter}
    result = run_cli(*[a.format(**values) for a in template])
    error_line(result, f"cannot write {named.format(**values)}: no space left on the device")
    leftovers = [p for p in full_dir.rglob("*") if p.name != "filler" and (p.is_file() and p.stat().st_size)]
    assert leftovers == [], leftovers  # no half-written file


# ---------------------------------------------------------------------------- the library's part

def test_a_write_on_a_full_disk_names_the_target(tmp_path):
    from your_ai.errors import OutputError
    from your_ai.files import writing

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    target = tmp_path / "results.json"
    with pytest.raises(OutputError, match=f"cannot write {target}: no space left on the device"):
        with writing(target), open("/dev/full", "w") as handle:
            handle.write("{}")
            handle.flush()


def test_errors_about_other_files_and_bugs_keep_their_type(tmp_path):
    from your_ai.errors import user_message
    from your_ai.files import writing

    with pytest.raises(PermissionError):  # reading an input while writing the output: the input is named
        with writing(tmp_path / "out.json"):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input.jsonl"))
    assert user_message(PermissionError(errno.EACCES, "Permission denied", "in.jsonl")) == (
        "in.jsonl: permission denied; choose a location you can write to, or change its permissions", 1)
    assert user_message(RuntimeError("a bug")) is None
    assert user_message(OSError(errno.EIO, "Input/output error")) is None
    assert user_message(OSError("transformers' own, without an errno")) is None


def test_ctrl_c_inside_a_command_is_one_line_and_exit_code_130():
    import click
    from click.testing import CliRunner

    from your_ai.cli import main

    def interrupted():
        raise KeyboardInterrupt

    main.add_command(click.Command("interrupted-command", callback=interrupted))
    try:
        result = CliRunner().invoke(main, ["interrupted-command"])
    finally:
        main.commands.pop("interrupted-command")
    assert result.exit_code == 130 and result.output == "Stopped by SIGINT.\n"
