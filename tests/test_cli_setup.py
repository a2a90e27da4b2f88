"""`your-ai --help`, `setup` and the machine info, through the real CLI."""

import json
import os
import subprocess
import sys

import psutil

COMMANDS = ("setup", "recommend", "benchmark", "optimize", "train", "generate", "evaluate",
            "validate", "score", "prepare", "analyze", "export")


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "your_ai", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"  {command} " in result.stdout, command


def test_console_script_names_are_declared():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("your-ai") == "your_ai.cli:main"
    assert scripts.get("your_ai") == "your_ai.cli:main"


def test_setup_detects_and_saves_the_machine_info(tmp_path):
    result = run_cli("setup", "--json", env={"YOUR_AI_CONFIG_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    saved = tmp_path / "machine.json"
    assert f"Saved machine info to {saved}" in result.stdout
    profile = json.loads(saved.read_text())
    assert profile["memory_gb"] == round(psutil.virtual_memory().total / 1e9, 2)
    assert profile["cpu_threads"] == os.cpu_count()
    assert profile["device"] in ("cuda", "mps", "cpu")
    import torch

    assert len(profile["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else len(profile["gpus"]))
    printed = json.loads(result.stdout.split("Saved machine info")[0])
    assert printed == profile


def test_setup_readable_output_and_explicit_path(tmp_path):
    target = tmp_path / "nested" / "machine.json"
    result = run_cli("setup", "--output", str(target))
    assert result.returncode == 0, result.stderr
    assert "Memory:" in result.stdout and "Device:" in result.stdout
    assert json.loads(target.read_text())["os"]

