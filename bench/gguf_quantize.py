"""GGUF export in each ``--quantize`` type: file size, time and memory, and how far the file is from the merged
model, one JSON line per type and a Markdown table at the end.

    python bench/gguf_quantize.py --checkpoint models/distrust-smollm2-135m
    python bench/gguf_quantize.py --checkpoint RUN --types q8_0,q4_0 --output-dir /tmp/gguf-bench

For each type:

  export_s, peak_gb   `your-ai export --format gguf --quantize TYPE` in its own process: wall time (loading the
                      base model and merging the adapter included) and peak RSS (its ``VmHWM`` at exit; a
                      child's ``ru_maxrss`` would count the pages of this process it was forked from)
  write_s             ``gguf_export.write_gguf`` alone, in this process, of the model merged once: the time the
                      type's encoding and the write take
  size_mb             the file (10^6 bytes)
  max_rel, mean_rel   each matrix of the file dequantized (``gguf.quants.dequantize``) against the merged weights
                      as written (``gguf_export.gguf_tensors``): the largest error over the matrix's largest
                      magnitude (the worst matrix), and the sum of errors over the sum of magnitudes (all matrices)
  logits_rel, top1    transformers' model of the file (``gguf_file=``) on a paragraph of the demo corpus: the
                      logits' distance to the merged model's over their norm, and the share of positions whose
                      most likely next token is the merged model's
  same_reply          whether the greedy reply (at most 16 tokens) to a chat prompt is the merged model's
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT_FILE = Path(__file__).parents[1] / "src" / "your_ai" / "assets" / "demo_corpus.jsonl"
QUESTION = "What is the capital of France?"
GREEDY_TOKENS = 16
PEAK_REPORTING_CLI = """
import atexit, sys
def report():
    peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("peak_kb", peak, file=sys.stderr)
atexit.register(report)
from your_ai.cli import main
main(sys.argv[1:], prog_name="your-ai")
"""


def export_in_process(checkpoint: str, output: Path, quantization: str) -> tuple[float, float]:
    """Seconds and peak RSS (GB) of one ``your-ai export`` process."""
    command = [sys.executable, "-c", PEAK_REPORTING_CLI, "export", "--checkpoint", checkpoint, "--output",
               str(output), "--format", "gguf", "--quantize", quantization, "--force", "--device", "cpu"]
    started = time.monotonic()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"export --quantize {quantization} failed:\n{result.stderr}")
    peak_kb = next(line.split()[1] for line in result.stderr.splitlines() if line.startswith("peak_kb "))
    return seconds, int(peak_kb) * 1024 / 1e9


def weight_errors(path: Path, expected: dict) -> tuple[float, float]:
    """(max_rel, mean_rel) of the file's matrices against ``expected`` (GGUF name -> float32 array)."""
    import gguf
    import numpy as np

    worst, error_sum, magnitude_sum = 0.0, 0.0, 0.0
    for tensor in gguf.GGUFReader(path).tensors:
        original = expected[tensor.name]
        if original.ndim < 2:
            continue
        error = np.abs(gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(original.shape) - original)
        worst = max(worst, float(error.max() / np.abs(original).max()))
        error_sum += float(error.sum(dtype=np.float64))
        magnitude_sum += float(np.abs(original).sum(dtype=np.float64))
    return worst, error_sum / magnitude_sum


def logit_agreement(path: Path, merged, tokenizer) -> tuple[float, float, bool]:
    """(logits_rel, top1, same_reply) of transformers' model of the file against ``merged``."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    text = json.loads(TEXT_FILE.read_text().splitlines()[0])["text"]
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected, got = merged(ids).logits, loaded(ids).logits
        reply = merged.generate(**chat, max_new_tokens=GREEDY_TOKENS, do_sample=False)
        same = loaded.generate(**chat, max_new_tokens=GREEDY_TOKENS, do_sample=False).tolist() == reply.tolist()
    top1 = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    return ((got - expected).norm() / expected.norm()).item(), top1, same


def measure(checkpoint: str, quantization: str, folder: Path, merged, tokenizer, tokenizer_folder: Path,
            expected: dict, name: str) -> dict:
    from your_ai.eval.gguf_export import write_gguf

    path = folder / f"model-{quantization}.gguf"
    export_s, peak_gb = export_in_process(checkpoint, path, quantization)
    scratch = folder / "scratch.gguf"
    started = time.monotonic()
    write_gguf(merged, tokenizer, tokenizer_folder, scratch, quantization, name, say=lambda line: None)
    write_s = time.monotonic() - started
    scratch.unlink()
    max_rel, mean_rel = weight_errors(path, expected)
    logits_rel, top1, same_reply = logit_agreement(path, merged, tokenizer)
    return {"quantize": quantization, "size_mb": round(path.stat().st_size / 1e6, 1), "export_s": round(export_s, 1),
            "write_s": round(write_s, 1), "peak_gb": round(peak_gb, 2), "max_rel": round(max_rel, 4),
            "mean_rel": round(mean_rel, 4), "logits_rel": round(logits_rel, 4), "top1": round(top1, 3),
            "same_reply": same_reply}


def main() -> None:
    from your_ai.eval.gguf_export import (
        GGUF_QUANTIZATIONS,
        gguf_architecture,
        gguf_tensors,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="an adapter folder (a train run's output)")
    parser.add_argument("--types", default=",".join(GGUF_QUANTIZATIONS), help="comma-separated --quantize values")
    parser.add_argument("--output-dir", help="where the files go (default: a temporary folder, removed)")
    args = parser.parse_args()
    from your_ai.eval.inference import load_for_inference

    im = load_for_inference(None, Path(args.checkpoint).resolve(), "cpu")
    merged, tokenizer = im.model.merge_and_unload().eval(), im.tokenizer
    architecture = gguf_architecture(merged.config.model_type)
    expected = {name: data() for name, _, data in gguf_tensors(merged, architecture)}
    rows = []
    with tempfile.TemporaryDirectory(dir=args.output_dir) as folder:
        tokenizer.save_pretrained(Path(folder) / "tokenizer")
        for quantization in args.types.split(","):
            row = measure(args.checkpoint, quantization, Path(folder), merged, tokenizer, Path(folder) / "tokenizer",
                          expected, Path(args.checkpoint).name)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| `--quantize` | file | export s | write s | peak | max rel | mean rel | logits rel | top-1 "
          "| same reply |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['quantize']} | {row['size_mb']} MB | {row['export_s']} | {row['write_s']} | "
              f"{row['peak_gb']} GB | {row['max_rel']:.2%} | {row['mean_rel']:.2%} | {row['logits_rel']:.2%} | "
              f"{row['top1']:.1%} | {'yes' if row['same_reply'] else 'no'} |")


if __name__ == "__main__":
    main()
