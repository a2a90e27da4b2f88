"""Model presets: hub ids, labels, and the real architecture of each model.

The architecture is enough to build a random-weight model of the exact shape
(``your_ai.model.architecture.build_random_model``) without downloading anything, which is how the
benchmark's ``--synthetic`` mode and the memory estimator measure 7B-70B models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from your_ai.model.architecture import Architecture


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str
    params: str  # label shown to users, e.g. "7B"
    tier: str  # "entry", "medium", "large", "enterprise", "demo"
    architecture: Architecture
    recommended: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["warnings"] = list(self.warnings)
        values["parameter_count"] = self.architecture.parameter_count()
        return values


_MISTRAL_7B = Architecture("mistral", 4096, 14336, 32, 32, 8, 32032, 32768, rope_theta=10000.0)
_LLAMA3_8B = Architecture("llama", 4096, 14336, 32, 32, 8, 128256, 131072, rope_theta=500000.0)
_LLAMA3_70B = Architecture("llama", 8192, 28672, 80, 64, 8, 128256, 131072, rope_theta=500000.0)
_QWEN2_14B = Architecture("qwen2", 5120, 13824, 48, 40, 8, 152064, 131072, rope_theta=1000000.0, rms_norm_eps=1e-6)
_QWEN2_32B = Architecture("qwen2", 5120, 27648, 64, 40, 8, 152064, 131072, rope_theta=1000000.0, rms_norm_eps=1e-6)

TINY = Preset(
    name="tiny",
    hub_id="your-ai/tiny-llama",
    params="4M",
    tier="demo",
    architecture=Architecture("llama", 256, 688, 4, 4, 2, 2048, 1024, rope_theta=10000.0),
    description="Built-in random-weight Llama-family model with its own tokenizer, for demos and tests.",
)

# The out-of-the-box model of train, generate, evaluate and validate (your_ai.model.default_model).
SMOLLM2_135M = Preset(
    name="smollm2-135m",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    params="135M",
    tier="demo",
    architecture=Architecture("llama", 576, 1536, 30, 9, 3, 49152, 8192, rope_theta=100000.0,
                              tie_word_embeddings=True),
    description="SmolLM2 135M Instruct: the default model, small enough to fine-tune on a CPU.",
)

# The benchmark's default list, tested smallest first.
BENCHMARK_PRESETS: tuple[Preset, ...] = (
    Preset(
        "hermes-mistral-7b", "NousResearch/Hermes-2-Pro-Mistral-7B", "7B", "entry",
        _MISTRAL_7B, description="Hermes 2 Pro on Mistral 7B",
    ),
    Preset(
        "dolphin-8b", "cognitivecomputations/dolphin-2.9-llama3-8b", "8B", "entry",
        Architecture("llama", 4096, 14336, 32, 32, 8, 128258, 8192, rope_theta=500000.0),
        description="Dolphin 2.9 on Llama 3 8B (uncensored fine-tune)",
    ),
    Preset(
        "llama-8b", "mlabonne/Meta-Llama-3.1-8B-Instruct-abliterated", "8B", "entry",
        _LLAMA3_8B, recommended=True, description="Llama 3.1 8B Instruct, abliterated",
    ),
    Preset(
        "r1-distill-14b", "huihui-ai/DeepSeek-R1-Distill-Qwen-14B-abliterated-v2", "14B", "medium",
        _QWEN2_14B, recommended=True, description="DeepSeek R1 distilled into Qwen 14B, abliterated",
    ),
    Preset(
        "hermes-70b", "NousResearch/Hermes-3-Llama-3.1-70B", "70B", "enterprise",
        _LLAMA3_70B, recommended=True, description="Hermes 3 on Llama 3.1 70B",
    ),
)

# Presets of the earlier Python tool, available by name (e.g. ``--models``).
EXTRA_PRESETS: tuple[Preset, ...] = (
    Preset(
        "r1-distill-32b", "huihui-ai/DeepSeek-R1-Distill-Qwen-32B-abliterated", "32B", "large",
        _QWEN2_32B, description="DeepSeek R1 distilled into Qwen 32B, abliterated",
    ),
    Preset(
        "r1-distill-70b", "huihui-ai/DeepSeek-R1-Distill-Llama-70B-abliterated", "70B", "enterprise",
        _LLAMA3_70B,
        warnings=("corpus-level censorship: the base corpus was filtered, abliteration does not restore it",),
        description="DeepSeek R1 distilled into Llama 70B, abliterated",
    ),
    Preset(
        "dolphin-70b", "cognitivecomputations/dolphin-2.9.4-llama3.1-70b", "70B", "enterprise",
        Architecture("llama", 8192, 28672, 80, 64, 8, 128258, 131072, rope_theta=500000.0),
        description="Dolphin 2.9.4 on Llama 3.1 70B",
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, SMOLLM2_135M, *BENCHMARK_PRESETS, *EXTRA_PRESETS)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def preset_for_hub_id(hub_id: str) -> Preset | None:
    for preset in PRESETS.values():
        if preset.hub_id == hub_id:
            return preset
    return None


def params_label(count: int) -> str:
    """A short parameter-count label: 4M, 7.2B, 70B."""
    if count >= 1e9:
        value, unit = count / 1e9, "B"
    else:
        value, unit = count / 1e6, "M"
    text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")
    return text + unit
