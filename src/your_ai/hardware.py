"""What machine is this: OS, CPU, memory, GPUs (``setup`` saves it as the machine info, ``machine.json``);
which engine, device and dtype to train on. (A hardware profile is something else: the best config ``optimize``
measured for a model, ``your_ai.fit.profiles``.)"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

GB = 1e9  # figures in GB (10^9 bytes), as everywhere in your-ai
DEVICES = ("cuda", "mps", "cpu")
ENGINES = ("auto", "torch", "mlx")  # how a model runs: PyTorch (CUDA, MPS, CPU) or MLX (Apple Silicon; CPU)
MLX_INSTALL = "pip install 'your-ai[mlx]'"


def config_dir() -> Path:
    """YOUR_AI_CONFIG_DIR, else $XDG_CONFIG_HOME/your-ai, else ~/.config/your-ai."""
    explicit = os.environ.get("YOUR_AI_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "your-ai"


def machine_info_path() -> Path:
    return config_dir() / "machine.json"


def pick_device(requested: str | None = None) -> str:
    """``requested`` if it is usable here, else the best available: cuda > mps > cpu."""
    import torch

    if requested:
        kind = requested.split(":")[0]
        if kind not in DEVICES:
            raise ValueError(f"--device {requested!r} is not one of {', '.join(DEVICES)}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ValueError("--device mps was asked for, but Apple's MPS backend is not available here")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def mlx_available() -> bool:
    """Whether MLX and mlx-lm can be imported here."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("mlx", "mlx_lm"))


def pick_engine(requested: str | None = None) -> str:
    """The engine a command runs on: ``torch`` or ``mlx`` as asked; ``auto`` (or None) is ``mlx`` on Apple
    Silicon when MLX is installed, else ``torch``. ``ValueError`` naming the flag when it cannot be used."""
    requested = requested or "auto"
    if requested not in ENGINES:
        raise ValueError(f"--engine {requested!r} is not one of {', '.join(ENGINES)}")
    if requested == "mlx" and not mlx_available():
        raise ValueError(f"--engine mlx needs MLX and mlx-lm, which are not installed: {MLX_INSTALL}")
    if requested == "auto":
        return "mlx" if is_apple_silicon() and mlx_available() else "torch"
    return requested


def training_dtype(device: str, supports_bf16: bool | None = None):
    """bf16 on CUDA and MPS devices that support it, fp32 elsewhere (the CPU trains in fp32).

    ``supports_bf16`` None: ask the device (``device_supports_bf16``)."""
    import torch

    kind = device.split(":")[0]
    if kind not in ("cuda", "mps"):
        return torch.float32
    if supports_bf16 is None:
        supports_bf16 = device_supports_bf16(device)
    return torch.bfloat16 if supports_bf16 else torch.float32


def device_supports_bf16(device: str) -> bool:
    """Whether ``device`` computes in bf16: a CUDA GPU that says so; MPS where a bf16 matmul runs (macOS 14
    and later)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    if device == "mps":
        try:
            ones = torch.ones(2, 2, dtype=torch.bfloat16, device="mps")
            (ones @ ones).cpu()
        except (RuntimeError, TypeError):
            return False
        return True
    return False


def _cpu_name() -> str:
    if platform.system() == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")
        if name:
            return name
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sysctl(key: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def detect_gpus() -> list[dict]:
    """CUDA GPUs with name and memory; on Apple Silicon, the chip with its unified memory."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({
                "backend": "cuda",
                "index": index,
                "name": props.name,
                "memory_gb": round(props.total_memory / GB, 2),
                "compute_capability": f"{props.major}.{props.minor}",
            })
    elif platform.system() == "Darwin" and torch.backends.mps.is_available():
        memory = _sysctl("hw.memsize")
        gpus.append({
            "backend": "mps",
            "index": 0,
            "name": _sysctl("machdep.cpu.brand_string") or "Apple Silicon",
            "memory_gb": round(int(memory) / GB, 2) if memory else None,
            "unified_memory": True,
        })
    return gpus


def detect_machine() -> dict:
    """The machine info: OS, CPU, memory, GPUs, the device training would use."""
    import psutil
    import torch

    memory = psutil.virtual_memory()
    gpus = detect_gpus()
    device = pick_device()
    device_memory = gpus[0]["memory_gb"] if gpus else round(memory.total / GB, 2)
    return {
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_cores": psutil.cpu_count(logical=False) or os.cpu_count(),
        "cpu_threads": os.cpu_count(),
        "memory_gb": round(memory.total / GB, 2),
        "available_memory_gb": round(memory.available / GB, 2),
        "gpus": gpus,
        "device": device,
        "device_memory_gb": device_memory,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_machine_info(info: dict, path: str | os.PathLike | None = None) -> Path:
    """Write the machine info as JSON (atomically); returns the path."""
    from your_ai.files import write_json_atomic

    return write_json_atomic(Path(path) if path else machine_info_path(), info)


def format_machine_info(profile: dict) -> str:
    lines = [
        f"OS:       {profile['os']} ({profile['machine']})",
        f"CPU:      {profile['cpu']} - {profile['cpu_cores']} cores / {profile['cpu_threads']} threads",
        f"Memory:   {profile['memory_gb']:.1f} GB ({profile['available_memory_gb']:.1f} GB available)",
    ]
    if profile["gpus"]:
        for gpu in profile["gpus"]:
            memory = f"{gpu['memory_gb']:.1f} GB" if gpu.get("memory_gb") else "unknown memory"
            kind = "unified memory" if gpu.get("unified_memory") else "GPU memory"
            lines.append(f"GPU {gpu['index']}:    {gpu['name']} ({gpu['backend']}, {memory} {kind})")
    else:
        lines.append("GPU:      none (training runs on the CPU)")
    lines.append(f"Device:   {profile['device']} ({profile['device_memory_gb']:.1f} GB usable for training)")
    return "\n".join(lines)
