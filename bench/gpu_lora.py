"""One LoRA training step on a GPU: PEFT baselines against the fast step, side by side in one process.

    python bench/gpu_lora.py --json-out bench/gpu_lora.json               # configs S and T
    python bench/gpu_lora.py --configs S --variants peft-liger,ours-fast
    python bench/gpu_lora.py --variants ours-fast,ours-fast-nofuse,ours-small,ours-small-nofuse  # shared LoRA A
    python bench/gpu_lora.py --configs T --custom r1-distill-14b:2:2048:16:48
    python bench/gpu_lora.py --smoke                                      # tiny model; runs on a CPU

Configs (random weights of the preset's real shape, bf16, SDPA attention, AdamW on the LoRA
parameters (``train.build_optimizer``: fused on CUDA, for every variant), LoRA on q/k/v/o of the
last N layers):
  S  hermes-mistral-7b, batch 2 x 1024, rank 64, last 16 layers
  T  llama-8b (vocab 128256), batch 8 x 2048, rank 16, all 32 layers
  --custom PRESET:BATCH:SEQ:RANK:LAYERS adds one (repeatable).

Variants, each on a freshly built model (the previous one freed and the cache emptied, peak
statistics reset before the build):
  peft             PEFT, Hugging Face forward with labels -> its loss
  peft-ckpt        the same with Hugging Face gradient checkpointing
  peft-liger       PEFT + Liger-Kernel (RoPE, RMSNorm, SwiGLU, fused linear cross-entropy)
  peft-liger-ckpt  the same with gradient checkpointing
  ours-fast        your_ai.step.fast, nothing recomputed, the chunked PyTorch head (the default)
  ours-fast-liger  ours-fast with Liger's per-token fused linear cross-entropy as the head
  ours-small       every adapted layer recomputed in the backward pass
  ours-fast-nofuse, ours-small-nofuse
                   the same without the shared q/k/v LoRA A matmul (``prepare_step(...,
                   share_lora_a=False)``: PEFT's three A matmuls); not in the default list. Each
                   ours-X row gets ``speedup_vs_nofuse`` (its tokens/s over ours-X-nofuse's)
  ours-fast-compiled, ours-small-compiled
                   trials: every decoder layer through ``torch.compile``; not in the default list
  ours-fast-ligernorm, ours-small-ligernorm
                   trials: Liger's RMSNorm instead of PyTorch's (``fast_step.torch_rms_norm``); not in
                   the default list; CUDA with liger_kernel only
  ours-fast-torchhead, ours-small-torchhead
                   trials: the chunked head with PyTorch ops instead of the Triton kernel
                   (``your_ai.step.head_kernel``, CUDA); not in the default list
  ours-fast-peftadd, ours-small-peftadd
                   trials: PEFT's ``result + lora_B(x) * scaling`` instead of the addmm epilogue
                   (``fast_step.fuse_lora_add``); not in the default list
  ours-auto        the mode ``choose_mode`` picks for --budget-gb (80 by default); reported as the
                   same measurement when it is ours-fast or ours-small
Ours computes the distrust-weighted objective (``train.compute_loss(..., fast_head=...)``).

Each variant: --warmup steps, then --steps timed steps (``torch.cuda.synchronize`` around each);
median step time, tokens/s (batch x seq per step), peak allocated and reserved GB, MFU, and the
ratio to the best baseline. An out-of-memory variant is recorded as "OOM".

MFU = model FLOPs per step / median step time / --peak-tflops (800 by default, bf16 dense):
  forward   2 * tokens * (N_linear + N_lora) + attention(layers)
  backward  2 * tokens * (N_layer * adapted_layers + N_head) + 4 * tokens * N_lora
            + 2 * attention(adapted_layers)
  attention(n) = n * 2 * batch * seq^2 * hidden   (QK^T and PV, causal half)
N_linear: every matmul weight (all layers + head; the input embedding is a lookup, not counted);
N_layer: one decoder layer's weights; N_head: vocab x hidden; N_lora: the adapters. The backward
runs only from the head down to the first adapted layer and computes no frozen-weight gradient.
Recomputation (checkpointing) is not model FLOPs, so it lowers MFU.

Before timing, a correctness check per config: on one model, the plain step
(``compute_loss`` through the full logits) against the fast step (fused kernels, bf16 LoRA
matmuls, each head), same batch with padding: loss within 1% and LoRA-gradient cosine >= 0.99.
The script exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from your_ai.step import fast as fast_step
from your_ai.objective.distrust import DistrustWeighting
from your_ai.model.lora import LoraSettings
from your_ai.step.memory import lora_parameter_count
from your_ai.model.presets import get_preset
from your_ai.train.loss import compute_loss
from your_ai.train.plan import Objective
from your_ai.train.setup import build_optimizer, load_for_training

GB = 1e9


@dataclass(frozen=True)
class BenchConfig:
    name: str
    preset: str
    batch_size: int
    seq_length: int
    lora_rank: int
    lora_layers: int

    @property
    def lora(self) -> LoraSettings:
        return LoraSettings(rank=self.lora_rank, layers=self.lora_layers)

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_length


CONFIGS = {
    "S": BenchConfig("S", "hermes-mistral-7b", 2, 1024, 64, 16),
    "T": BenchConfig("T", "llama-8b", 8, 2048, 16, 32),
}
SMOKE = BenchConfig("smoke", "tiny", 2, 64, 8, 3)

BASELINES = ("peft", "peft-ckpt", "peft-liger", "peft-liger-ckpt")
OURS = ("ours-fast", "ours-fast-liger", "ours-small", "ours-auto")
UNSHARED = ("ours-fast-nofuse", "ours-small-nofuse")  # q/k/v LoRA A as PEFT's three matmuls
TRIALS = ("ours-fast-compiled", "ours-small-compiled", "ours-fast-ligernorm", "ours-small-ligernorm",
          "ours-fast-torchhead", "ours-small-torchhead", "ours-fast-peftadd", "ours-small-peftadd")
VARIANTS = BASELINES + OURS
KNOWN_VARIANTS = VARIANTS + UNSHARED + TRIALS
VARIANT_SUFFIXES = ("-nofuse", "-compiled", "-ligernorm", "-torchhead", "-peftadd")


def base_variant(variant: str) -> str:
    """``ours-fast-compiled`` -> ``ours-fast``: the variant whose step mode a trial variant runs."""
    for suffix in VARIANT_SUFFIXES:
        variant = variant.removesuffix(suffix)
    return variant

OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def parse_custom(text: str) -> BenchConfig:
    parts = text.split(":")
    if len(parts) != 5:
        raise argparse.ArgumentTypeError(f"--custom {text!r}: expected PRESET:BATCH:SEQ:RANK:LAYERS")
    preset, *numbers = parts
    try:
        get_preset(preset)
        batch, seq, rank, layers = (int(value) for value in numbers)
    except (KeyError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"--custom {text!r}: {error}") from None
    return BenchConfig(f"{preset}-{batch}x{seq}-r{rank}-l{layers}", preset, batch, seq, rank, layers)


# ---------------------------------------------------------------------------- FLOPs

def step_flops(config: BenchConfig) -> float:
    """Model FLOPs of one LoRA training step (see the module docstring)."""
    arch = get_preset(config.preset).architecture
    h, i, layers = arch.hidden_size, arch.intermediate_size, arch.num_hidden_layers
    kv = arch.num_key_value_heads * arch.head_dim
    adapted = min(config.lora_layers, layers)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i
    head = arch.vocab_size * h
    lora = lora_parameter_count(arch, config.lora_rank, adapted)
    tokens = config.tokens

    def attention(n: int) -> float:
        return n * 2.0 * config.batch_size * config.seq_length ** 2 * h

    forward = 2.0 * tokens * (layers * per_layer + head + lora) + attention(layers)
    backward = 2.0 * tokens * (adapted * per_layer + head) + 4.0 * tokens * lora + 2 * attention(adapted)
    return forward + backward


# ---------------------------------------------------------------------------- helpers

@contextmanager
def restore_modeling_globals():
    """Liger patches RoPE / RMSNorm / MLP classes in ``transformers``' modules; undo that afterwards,
    so every variant builds the same model."""
    import importlib

    modules = []
    for name in ("llama", "mistral", "qwen2"):
        try:
            modules.append(importlib.import_module(f"transformers.models.{name}.modeling_{name}"))
        except ImportError:
            pass
    saved = {module: dict(vars(module)) for module in modules}
    try:
        yield
    finally:
        for module, values in saved.items():
            for key, value in values.items():
                if vars(module).get(key) is not value:
                    setattr(module, key, value)


def apply_liger_baseline(model) -> None:
    """The Liger baseline: its fused kernels and its fused linear cross-entropy in the HF forward."""
    import liger_kernel.transformers as liger

    lm = fast_step.causal_lm(model)
    patch = getattr(liger, fast_step.LIGER_PATCHES[lm.config.model_type])
    patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True, model=lm)


def make_batch(config: BenchConfig, device: str, *, padded: bool = False, seq_length: int | None = None) -> dict:
    arch = get_preset(config.preset).architecture
    seq = seq_length or config.seq_length
    generator = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(0, min(arch.vocab_size, 32000), (config.batch_size, seq), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    if padded:
        attention_mask[-1, seq - seq // 4:] = 0
        labels[attention_mask == 0] = -100
        labels[0, : seq // 8] = -100  # a prompt that is not learned
    auth = torch.rand(config.batch_size, generator=generator, dtype=torch.float64) * 0.9
    entropy = torch.rand(config.batch_size, generator=generator, dtype=torch.float64) * 8.0
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "auth_weight": auth, "prov_entropy": entropy}
    return {key: value.to(device) for key, value in batch.items()}


def objective_for(batch: dict) -> Objective:
    weighting = DistrustWeighting.from_dataset(batch["auth_weight"].tolist(), batch["prov_entropy"].tolist())
    return Objective(mode="weighted", weighting=weighting)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def randomise_lora_b(model, seed: int = 7) -> None:
    """LoRA B starts at zero (every A gradient zero); give it values so the check sees all gradients."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                values = torch.randn(parameter.shape, generator=generator) * 0.01
                parameter.copy_(values.to(parameter.device, parameter.dtype))


# ---------------------------------------------------------------------------- the check

def correctness_check(config: BenchConfig, device: str) -> dict:
    """Plain step vs fast step (each head) on one model and one padded batch."""
    seq = min(512, config.seq_length)
    batch_config = BenchConfig(config.name, config.preset, 2, seq, config.lora_rank, config.lora_layers)
    batch = make_batch(batch_config, device, padded=True)
    objective = objective_for(batch)
    result = {"config": config.name, "batch": f"2 x {seq}, padded"}
    release(device)
    with restore_modeling_globals():
        loaded = load_for_training(config.preset, config.lora, device, synthetic=True)
        model = loaded.model
        model.train()
        randomise_lora_b(model)
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

        def run(**kwargs):
            model.zero_grad(set_to_none=True)
            parts = compute_loss(model, batch, objective, **kwargs)
            parts.total.backward()
            grads = torch.cat([p.grad.detach().float().flatten() for _, p in trainable])
            return float(parts.total.detach()), grads

        plain_loss, plain_grads = run()
        setup = fast_step.prepare_step(model, None)
        result["fast_step"] = setup.notes
        heads = ["chunked"] + (["liger"] if device.startswith("cuda") and fast_step.liger_available() else [])
        result["heads"], ok = {}, True
        for head in heads:
            loss, grads = run(fast_head=head)
            cosine = float(torch.nn.functional.cosine_similarity(grads, plain_grads, dim=0))
            relative = abs(loss - plain_loss) / abs(plain_loss)
            passed = relative <= 1e-2 and cosine >= 0.99
            ok = ok and passed
            result["heads"][head] = {"loss": loss, "plain_loss": plain_loss, "relative_loss_difference": relative,
                                     "gradient_cosine": cosine,
                                     "gradient_norm_ratio": float(grads.norm() / plain_grads.norm()),
                                     "passed": passed}
        result["passed"] = ok
        del model, loaded, trainable, plain_grads
    release(device)
    return result


# ---------------------------------------------------------------------------- one variant

def measure(config: BenchConfig, variant: str, device: str, warmup: int, steps: int, mode) -> dict:
    """Build, prepare and time one variant; returns timings and what was used."""
    ours = variant.startswith("ours")
    checkpoint = variant in ("peft-ckpt", "peft-liger-ckpt")
    loaded = load_for_training(config.preset, config.lora, device, grad_checkpoint=checkpoint, synthetic=True)
    model = loaded.model
    model.train()
    lm = fast_step.causal_lm(model)
    info = {"attention": getattr(lm.config, "_attn_implementation", None)}
    if variant.startswith("peft-liger"):
        apply_liger_baseline(model)
    head = None
    if ours:
        setup = fast_step.prepare_step(model, mode, share_lora_a=variant not in UNSHARED,
                                       fuse_add=not variant.endswith("-peftadd"))
        head = ("liger" if variant == "ours-fast-liger" else "torch" if variant.endswith("-torchhead")
                else fast_step.resolve_head("auto", device.split(":")[0]))
        info.update(head=head, chunk_tokens=mode.chunk_tokens, notes=setup.notes, checkpointed_layers=len(setup.checkpointed_layers),
                    shared_lora_a_layers=len(setup.shared_lora_a_layers), fused_add_layers=len(setup.fused_add_layers))
        if variant.endswith("-ligernorm"):  # Liger's RMSNorm instead of PyTorch's (fast_step.torch_rms_norm)
            from liger_kernel.transformers.monkey_patch import _patch_rms_norm_module

            for module in model.modules():
                if type(module).__name__.endswith("RMSNorm"):
                    del module.forward
                    _patch_rms_norm_module(module)
        if variant.endswith("-compiled"):  # each decoder layer through torch.compile (Inductor)
            for layer in fast_step.decoder_layers(model):
                layer.compile()
    optimizer = build_optimizer(model, 1e-5)
    batch = make_batch(config, device)
    objective = objective_for(batch)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        if ours:
            loss = compute_loss(model, batch, objective, fast_head=head, chunk_tokens=mode.chunk_tokens or None).total
        else:
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"], use_cache=False).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    times, losses = [], []
    for index in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        losses.append(step())
        synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    info.update(times=times, losses=losses)
    return info


def run_variant(config: BenchConfig, variant: str, device: str, args, mode) -> dict:
    row = {"config": config.name, "preset": config.preset, "variant": variant,
           "batch_size": config.batch_size, "seq_length": config.seq_length,
           "lora_rank": config.lora_rank, "lora_layers": config.lora_layers}
    if mode is not None:
        row.update(mode=mode.name, checkpointed_layers=mode.checkpointed_layers, estimate_gb=mode.estimate_gb,
                   mode_reason=mode.reason)
    release(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        with restore_modeling_globals():
            info = measure(config, variant, device, args.warmup, args.steps, mode)
        times = info.pop("times")
        median = statistics.median(times)
        flops = step_flops(config)
        row.update(status="ok", step_s=median, tokens_per_s=config.tokens / median, step_times_s=times,
                   final_loss=info["losses"][-1], **{k: v for k, v in info.items() if k != "losses"})
        row["model_tflops_per_step"] = flops / 1e12
        row["mfu"] = flops / median / (args.peak_tflops * 1e12) if cuda else None
    except OOM_ERRORS:
        row["status"] = "OOM"
    except Exception as error:  # a broken variant is recorded; the others still run
        traceback.print_exc()
        row.update(status="error", error=f"{type(error).__name__}: {str(error)[:500]}")
    if cuda:
        row["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / GB
        row["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / GB
    row["wall_s"] = time.perf_counter() - started
    release(device)
    return row


def skip_reason(variant: str, device: str) -> str | None:
    liger = device.startswith("cuda") and fast_step.liger_available()
    if "liger" in variant and not liger:  # the Liger baselines, its head, its RMSNorm
        return "needs CUDA and liger_kernel"
    return None


def run_config(config: BenchConfig, variants: list[str], device: str, args, log) -> list[dict]:
    arch = get_preset(config.preset).architecture
    modes = {
        "ours-fast": fast_step.mode_with(arch, config.batch_size, config.seq_length, config.lora, device, 0),
        "ours-fast-liger": fast_step.mode_with(arch, config.batch_size, config.seq_length, config.lora, device, 0),
        "ours-small": fast_step.mode_with(arch, config.batch_size, config.seq_length, config.lora, device,
                                          config.lora_layers),
        "ours-auto": fast_step.choose_mode(arch, config.batch_size, config.seq_length, config.lora, device,
                                           args.budget_gb),
    }
    auto = modes["ours-auto"]
    same_as = {0: "ours-fast", auto.adapted_layers: "ours-small"}.get(auto.checkpointed_layers)
    order = [v for v in variants if v != "ours-auto"]
    if "ours-auto" in variants:
        if same_as and same_as not in order:
            order.append(same_as)
        order.append("ours-auto")
    rows = []
    for variant in order:
        reason = skip_reason(variant, device)
        if reason:
            rows.append({"config": config.name, "preset": config.preset, "variant": variant, "status": "skipped",
                         "reason": reason})
            log(f"{config.name} {variant}: skipped ({reason})")
            continue
        if variant == "ours-auto" and same_as:
            measured = next(row for row in rows if row["variant"] == same_as)
            row = {**measured, "variant": "ours-auto", "same_as": same_as, "mode_reason": auto.reason,
                   "budget_gb": args.budget_gb}
        else:
            row = run_variant(config, variant, device, args, modes.get(base_variant(variant)))
            if variant == "ours-auto":
                row["budget_gb"] = args.budget_gb
        rows.append(row)
        log(f"{config.name} {variant}: {describe(row)}")
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    ok = {row["variant"]: row for row in rows if row.get("status") == "ok"}
    for name in UNSHARED:
        shared = ok.get(name.removesuffix("-nofuse"))
        if shared and name in ok:
            shared["speedup_vs_nofuse"] = shared["tokens_per_s"] / ok[name]["tokens_per_s"]
    for name in TRIALS:
        base = ok.get(base_variant(name))
        if base and name in ok:
            ok[name]["speedup_vs_" + base["variant"]] = ok[name]["tokens_per_s"] / base["tokens_per_s"]
    measured = [row for row in rows if row.get("status") == "ok" and row["variant"] in BASELINES]
    if not measured:
        return
    best = max(measured, key=lambda row: row["tokens_per_s"])
    for row in rows:
        if row.get("status") != "ok":
            continue
        row["best_baseline"] = best["variant"]
        row["speedup_vs_best_baseline"] = row["tokens_per_s"] / best["tokens_per_s"]
        if row.get("peak_reserved_gb") and best.get("peak_reserved_gb"):
            row["reserved_vs_best_baseline"] = row["peak_reserved_gb"] / best["peak_reserved_gb"]


def describe(row: dict) -> str:
    if row.get("status") != "ok":
        return row.get("status", "?")
    text = f"{row['step_s']:.3f} s, {row['tokens_per_s']:,.0f} tok/s"
    if row.get("peak_reserved_gb") is not None:
        text += f", {row['peak_allocated_gb']:.1f} / {row['peak_reserved_gb']:.1f} GB"
    if row.get("mfu") is not None:
        text += f", MFU {100 * row['mfu']:.1f}%"
    return text + f" ({row.get('wall_s', 0):.0f} s wall)"


def print_table(rows: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="LoRA training step: median of timed steps")
    for column in ("config", "variant", "step s", "tok/s", "alloc GB", "reserved GB", "MFU", "x best baseline",
                   "x nofuse", "est. GB", "mode"):
        table.add_column(column, justify="left" if column in ("config", "variant", "mode") else "right")
    for row in rows:
        def number(key, fmt):
            value = row.get(key)
            return format(value, fmt) if isinstance(value, (int, float)) else "-"

        status = row.get("status")
        mode = row.get("mode", "")
        if row.get("checkpointed_layers") and mode == "selective":
            mode += f" ({row['checkpointed_layers']} recomputed)"
        if row.get("same_as"):
            mode += f" = {row['same_as']}"
        if row.get("head"):
            mode += f", head {row['head']}"
        table.add_row(
            row["config"], row["variant"],
            number("step_s", ".3f") if status == "ok" else status,
            number("tokens_per_s", ",.0f"), number("peak_allocated_gb", ".1f"), number("peak_reserved_gb", ".1f"),
            f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "-",
            number("speedup_vs_best_baseline", ".2f"), number("speedup_vs_nofuse", ".3f"),
            number("estimate_gb", ".1f"), mode,
        )
    console.print(table)


def environment(device: str) -> dict:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    values = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
              "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
              **{package: version(package) for package in ("transformers", "peft", "liger-kernel")}}
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(0)
        values.update(gpu=properties.name, gpu_memory_gb=properties.total_memory / GB)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="S,T", help="comma-separated names from: " + ", ".join(CONFIGS))
    parser.add_argument("--custom", action="append", type=parse_custom, default=[],
                        help="another config, PRESET:BATCH:SEQ:RANK:LAYERS (repeatable)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated from: " + ", ".join(KNOWN_VARIANTS))
    parser.add_argument("--steps", type=int, help="timed steps (default 8; 2 with --smoke)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (default 3; 1 with --smoke)")
    parser.add_argument("--budget-gb", type=float, default=80.0, help="memory budget for ours-auto (GB, 1e9 bytes)")
    parser.add_argument("--peak-tflops", type=float, default=800.0, help="bf16 matmul peak for MFU")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check")
    parser.add_argument("--device", help="default: cuda (cpu with --smoke when no GPU is present)")
    parser.add_argument("--smoke", action="store_true", help="the tiny model, 2 x 64 tokens: checks the script")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--expandable-segments", action="store_true",
                        help="every variant with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (what `your-ai` "
                             "sets unless you set it yourself)")
    args = parser.parse_args(argv)
    if args.expandable_segments:  # as `your-ai` does, before the first CUDA allocation
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")

    from rich.console import Console

    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; use --smoke to run the tiny model on the CPU")
    if not device.startswith("cuda") and not args.smoke:
        parser.error("the benchmark needs a CUDA GPU; --smoke runs the tiny model on the CPU")
    if not device.startswith("cuda"):
        torch.set_num_threads(1)  # a CPU smoke run checks the script, not the speed; one thread avoids contention
    args.steps = args.steps if args.steps is not None else (2 if args.smoke else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in KNOWN_VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(KNOWN_VARIANTS)}")
    if args.smoke:
        configs = [SMOKE, *args.custom]
    else:
        names = [name.strip() for name in args.configs.split(",") if name.strip()]
        missing = [name for name in names if name not in CONFIGS]
        if missing:
            parser.error(f"unknown config(s) {', '.join(missing)}; known: {', '.join(CONFIGS)} (or --custom)")
        configs = [CONFIGS[name] for name in names] + args.custom

    started = time.perf_counter()

    def log(message: str) -> None:
        console.print(f"[{time.perf_counter() - started:6.1f} s] {message}", highlight=False)

    env = environment(device)
    env["expandable_segments"] = args.expandable_segments
    log(f"{env.get('gpu', device)} | torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
        f"liger-kernel {env['liger-kernel']}")
    checks, rows = [], []
    for config in configs:
        if not args.no_check:
            check = correctness_check(config, device)
            checks.append(check)
            heads = ", ".join(f"{head}: loss {v['relative_loss_difference']:.2e} rel, grad cosine "
                              f"{v['gradient_cosine']:.5f}" for head, v in check["heads"].items())
            log(f"{config.name} check {'PASS' if check['passed'] else 'FAIL'} ({heads})")
        rows.extend(run_config(config, variants, device, args, log))
    print_table(rows, console)
    result = {
        "environment": env,
        "configs": [asdict(config) for config in configs],
        "settings": {"steps": args.steps, "warmup": args.warmup, "budget_gb": args.budget_gb,
                     "peak_tflops": args.peak_tflops},
        "checks": checks,
        "rows": rows,
        "elapsed_s": time.perf_counter() - started,
    }
    if args.json_out:
        from your_ai.files import write_json_atomic

        write_json_atomic(args.json_out, result)
        log(f"wrote {args.json_out}")
    failed = [check["config"] for check in checks if not check["passed"]]
    if failed:
        console.print(f"correctness check FAILED for {', '.join(failed)}", style="bold red")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
