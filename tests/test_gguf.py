"""GGUF in and out: `export --format gguf` read back with the gguf package and with transformers, and
`--model file.gguf` converted once into the your-ai cache (real files, real models, real subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_inference import make_adapter

from your_ai.cli import main
from your_ai.eval.export import export_gguf
from your_ai.eval.gguf_export import (
    GgufExportError,
    file_type,
    gguf_architecture,
    llama3_rope_factors,
    permute_for_llama_cpp,
    tensor_types,
    write_gguf,
)
from your_ai.eval.gguf_tokenizer import pre_tokenizer_name
from your_ai.eval.inference import load_for_inference
from your_ai.files import file_sha256
from your_ai.model.errors import InvalidModelNameError, ModelFileError
from your_ai.model.resolve import resolve_model, your_ai_cache_dir

PROMPT = "The bridge was completed in"
DEMO_CORPUS = Path(__file__).parents[1] / "src" / "your_ai" / "assets" / "demo_corpus.jsonl"


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """A tiny adapter, the model it merges into, and its GGUF exports in f16, q8_0, q5_1, q5_0 and q4_0."""
    root = tmp_path_factory.mktemp("gguf")
    adapter = make_adapter(root / "adapter")
    files = {quantization: export_gguf(adapter, root / f"tiny-{quantization}.gguf", quantization, "cpu",
                                       say=lambda line: None)
             for quantization in ("f16", "q8_0", "q5_1", "q5_0", "q4_0")}
    im = load_for_inference(None, adapter, "cpu")
    return adapter, im.model.merge_and_unload(), im.tokenizer, files


def _gguf_names(config) -> dict[str, str]:
    """Hugging Face tensor name -> GGUF tensor name, of the tiny Llama."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for index in range(config.num_hidden_layers):
        for hf, gguf_name in layer.items():
            names[f"model.layers.{index}.{hf}.weight"] = f"blk.{index}.{gguf_name}.weight"
    return names


def _expected_tensors(model) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> shape (GGUF lists the fastest-varying dimension first) of the tiny Llama."""
    shapes = dict(model.state_dict().items())
    return {gguf_name: tuple(reversed(shapes[hf].shape)) for hf, gguf_name in _gguf_names(model.config).items()}


def _dequantized(path: Path) -> tuple[dict[str, np.ndarray], object]:
    import gguf

    reader = gguf.GGUFReader(path)
    return {tensor.name: gguf.quants.dequantize(tensor.data, tensor.tensor_type) for tensor in reader.tensors}, reader


def test_the_file_names_its_architecture_tensors_and_shapes_as_llama_cpp_expects(exported):
    _, merged, _, files = exported
    weights, reader = _dequantized(files["q8_0"])
    config = merged.config
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny"
    assert fields["llama.block_count"] == config.num_hidden_layers
    assert fields["llama.attention.head_count_kv"] == config.num_key_value_heads == 2
    assert fields["llama.context_length"] == config.max_position_embeddings
    assert fields["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(fields["tokenizer.ggml.tokens"]) == config.vocab_size and fields["tokenizer.ggml.merges"]
    assert fields["tokenizer.ggml.eos_token_id"] == merged.config.eos_token_id
    assert "<|assistant|>" in fields["tokenizer.chat_template"]
    expected = _expected_tensors(merged)
    assert {tensor.name: tuple(int(n) for n in tensor.shape) for tensor in reader.tensors} == expected
    kinds = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["blk.0.attn_norm.weight"] == "F32"
    assert kinds["blk.0.ffn_down.weight"] == "F16"  # rows of 688 do not split into blocks of 32


# The largest rounding error of a block's value, as a share of the block's largest magnitude m: q8_0 and q5_1 round
# to steps of m/127 and at most 2m/31; q4_0's 16 steps of m/8 span -m to 7m/8, so +m may end up at 7m/8.
@pytest.mark.parametrize("quantization, tolerance", [("f16", 1e-3), ("q8_0", 1 / 127), ("q5_1", 1 / 31),
                                                     ("q4_0", 1 / 8 + 1e-3)])
def test_the_dequantized_weights_are_the_merged_models(exported, quantization, tolerance):
    _, merged, _, files = exported
    weights, _ = _dequantized(files[quantization])
    config = merged.config
    state = merged.state_dict()
    for index in range(config.num_hidden_layers):
        for hf, gguf_name, heads in (("q_proj", "attn_q", config.num_attention_heads),
                                     ("k_proj", "attn_k", config.num_key_value_heads), ("v_proj", "attn_v", None)):
            original = state[f"model.layers.{index}.self_attn.{hf}.weight"].float()
            if heads:  # Llama's query and key rows are reordered for llama.cpp's rotary embedding
                original = permute_for_llama_cpp(original, heads)
            written = torch.from_numpy(weights[f"blk.{index}.{gguf_name}.weight"].copy())
            scale = original.abs().max().item()
            assert (written - original).abs().max().item() <= tolerance * scale, (quantization, hf, index)
    embedding = torch.from_numpy(weights["token_embd.weight"].copy())
    assert (embedding - state["model.embed_tokens.weight"]).abs().max() <= tolerance * embedding.abs().max()


def test_transformers_reads_the_file_back_to_the_same_greedy_continuation(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, merged, tokenizer, files = exported
    path = files["f16"]
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    loaded_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert loaded_tokenizer(PROMPT, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        assert (loaded(ids).logits - merged(ids).logits).abs().max() < 0.05
        expected = merged.generate(ids, max_new_tokens=6, do_sample=False)
        assert loaded.generate(ids, max_new_tokens=6, do_sample=False).tolist() == expected.tolist()


@pytest.mark.parametrize("quantization, file_type", [("q4_0", 2), ("q5_1", 9)])
def test_4_and_5_bit_files_keep_the_output_layer_at_8_bits_as_llama_quantize_does(exported, quantization, file_type):
    _, merged, _, files = exported
    weights, reader = _dequantized(files[quantization])
    assert reader.fields["general.file_type"].contents() == file_type  # llama.cpp's LLAMA_FTYPE_MOSTLY_*
    kinds = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.3.attn_v.weight", "blk.1.ffn_up.weight"):
        assert kinds[name] == quantization.upper(), name
    assert kinds["output.weight"] == "Q8_0" and kinds["blk.0.ffn_norm.weight"] == kinds["output_norm.weight"] == "F32"
    assert kinds["blk.2.ffn_down.weight"] == "F16"  # rows of 688 do not split into blocks of 32
    output, lm_head = torch.from_numpy(weights["output.weight"].copy()), merged.state_dict()["lm_head.weight"]
    assert (output - lm_head).abs().max() <= lm_head.abs().max() / 127


def test_a_tied_output_layer_makes_the_token_embedding_8_bit():
    shapes = [("token_embd.weight", (49152, 576)), ("blk.0.attn_q.weight", (576, 576)),
              ("blk.0.attn_norm.weight", (576,))]
    assert {name: kind.name for name, kind in tensor_types(shapes, "q4_1").items()} == {
        "token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q4_1", "blk.0.attn_norm.weight": "F32"}
    assert [file_type(quantization).value for quantization in ("q8_0", "f16", "bf16", "f32")] == [7, 1, 32, 0]


@pytest.mark.parametrize("quantization, bound", [("q4_0", 0.3), ("q5_0", 0.2)])
def test_transformers_reads_a_4_or_5_bit_file_back_to_the_weights_it_holds(exported, quantization, bound):
    """transformers' model of the file computes what the merged model computes with the file's dequantized
    weights. The rounding moves the tiny random model's logits far more than a trained model's (bench/RESULTS.md
    has both): the bound on their distance to the merged model's only catches a wrong dequantization."""
    import copy

    from transformers import AutoModelForCausalLM

    _, merged, tokenizer, files = exported
    path = files[quantization]
    weights, _ = _dequantized(path)
    config = merged.config
    rounded = copy.deepcopy(merged)
    state = {}
    for hf_name, gguf_name in _gguf_names(config).items():
        weight = torch.from_numpy(weights[gguf_name].copy())
        heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}.get(hf_name.split(".")[-2])
        if heads:  # undo the reordering for llama.cpp's rotary embedding
            weight = weight.reshape(heads, -1, 2, weight.shape[-1]).swapaxes(1, 2).reshape(weight.shape)
        state[hf_name] = weight
    rounded.load_state_dict(state)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = merged(ids).logits, loaded(ids).logits
        assert torch.allclose(got, rounded(ids).logits, atol=1e-4)
    assert (got - expected).norm() < bound * expected.norm()


def test_qwen2_is_written_without_the_permutation_and_with_its_biases(tmp_path, tiny_model_dir):
    """A random tiny Qwen2 (query/key/value biases, tied embeddings) written in f32 reads back with the same
    logits: Qwen2 rotates halves as transformers does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    config = Qwen2Config(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, rope_theta=1000000.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    path = tmp_path / "qwen.gguf"
    write_gguf(model, tokenizer, tmp_path / "tokenizer", path, "f32", "qwen-test", say=lambda line: None)
    weights, reader = _dequantized(path)
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert "output.weight" not in weights and "blk.0.attn_q.bias" in weights  # tied: no output layer
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)


def test_a_sentencepiece_tokenizer_is_written_with_scores_and_reads_back_the_same(tmp_path, tiny_model_dir):
    """Llama 2 and Mistral tokenize with SentencePiece BPE: a small one trained here, with a random tiny Llama,
    reads back from the GGUF file with the same token ids (no BOS added, as the original) and logits."""
    sentencepiece = pytest.importorskip("sentencepiece")
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaTokenizer,
    )

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(json.loads(line)["text"] for line in DEMO_CORPUS.read_text().splitlines()[:60]))
    (tmp_path / "spm").mkdir()
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spm" / "tokenizer"),
                                             vocab_size=400, model_type="bpe", byte_fallback=True, minloglevel=2)
    tokenizer = LlamaTokenizer.from_pretrained(tmp_path / "spm")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    path = tmp_path / "spm.gguf"
    write_gguf(model, tokenizer, tmp_path / "tokenizer", path, "f32", "spm-test", say=lambda line: None)
    _, reader = _dequantized(path)
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.token_type"].contents()[3] == 6  # <0x00>: a byte token
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in (PROMPT + " in 1887", "Two  spaces\nand línea ü"):
        assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"], text
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)


def test_llama3_rope_scaling_becomes_the_factors_transformers_divides_frequencies_by():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_scaling=scaling, rope_theta=500000.0,
                         max_position_embeddings=131072)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / 500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64)
    factors = llama3_rope_factors(config)
    assert torch.allclose(plain / scaled, factors, rtol=1e-4) and factors[0] == 1 and factors[-1] == 8


def test_families_without_a_gguf_writer_are_refused_in_one_line():
    for family in ("llama", "mistral", "qwen2"):
        gguf_architecture(family)
    with pytest.raises(GgufExportError, match=r"supports the llama, mistral, qwen2 families; .* 'phi3'"):
        gguf_architecture("phi3")


def test_byte_level_pre_tokenizers_get_llama_cpps_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name({"pre_tokenizer": byte_level, "model": {"vocab": {"1": 0, "2": 1, "12": 2}}}) == "gpt-2"
    assert pre_tokenizer_name({"pre_tokenizer": byte_level, "model": {"vocab": {"1": 0, "2": 1, "a": 2}}}) == "smollm"
    digits = {"type": "Digits", "individual_digits": True}
    sequence = {"type": "Sequence", "pretokenizers": [digits, byte_level]}
    assert pre_tokenizer_name({"pre_tokenizer": sequence}) == "smollm"

    def split(pattern):
        return {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": pattern}},
                                                      {**byte_level, "use_regex": False}]}
    words = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
    tail = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    assert pre_tokenizer_name({"pre_tokenizer": split(words + r"\p{N}{1,3}" + tail)}) == "llama-bpe"
    assert pre_tokenizer_name({"pre_tokenizer": split(words + r"\p{N}" + tail)}) == "qwen2"
    assert pre_tokenizer_name({"pre_tokenizer": split(r"\w+")}) is None


def test_export_flags_and_an_existing_output(exported, tmp_path):
    adapter, _, _, files = exported
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--checkpoint", str(adapter), "--output", str(tmp_path / "m"),
                                  "--quantize", "f16"])
    assert result.exit_code == 2 and "--quantize applies to --format gguf only" in result.output
    result = runner.invoke(main, ["export", "--checkpoint", str(adapter), "--output", str(files["f16"]),
                                  "--format", "gguf"])
    assert result.exit_code == 1 and "exists; pass --force" in result.output and "Traceback" not in result.output


SIGNAL_AT_THE_THIRD_TENSOR = """
import signal, sys, gguf
write = gguf.GGUFWriter.write_tensor_data
written = []
def write_then_signal(self, *args, **kwargs):
    write(self, *args, **kwargs)
    written.append(1)
    if len(written) == 3:
        signal.raise_signal(SIGNUM)
"""  # a GGUFWriter.write_tensor_data that sends the signal SIGNUM to its process after the third tensor


def test_ctrl_c_during_the_write_leaves_no_file(exported, tmp_path):
    """A real export process gets SIGINT after writing three tensors: it removes its temporary file and the
    tokenizer's temporary folder, says so in one line and exits with 130."""
    import os
    import signal
    import subprocess
    import sys

    adapter, _, _, _ = exported
    output, scratch = tmp_path / "out" / "model.gguf", tmp_path / "tmp"
    output.parent.mkdir()
    scratch.mkdir()
    script = SIGNAL_AT_THE_THIRD_TENSOR.replace("SIGNUM", str(int(signal.SIGINT)))
    script += "gguf.GGUFWriter.write_tensor_data = write_then_signal\n"
    script += "from your_ai.cli import main\nmain(sys.argv[1:])\n"
    result = subprocess.run([sys.executable, "-c", script, "export", "--checkpoint", str(adapter), "--output",
                             str(output), "--format", "gguf", "--quantize", "q4_0"], capture_output=True, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)}, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"Stopped by SIGINT: nothing written to {output}"
    assert list(output.parent.iterdir()) == [] and list(scratch.iterdir()) == []


def test_sigterm_during_the_write_leaves_no_file(exported, tmp_path, monkeypatch):
    import signal

    import gguf

    from your_ai.files import Interrupted

    adapter, _, _, _ = exported
    namespace = {}
    exec(SIGNAL_AT_THE_THIRD_TENSOR.replace("SIGNUM", str(int(signal.SIGTERM))), namespace)
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", namespace["write_then_signal"])
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        export_gguf(adapter, tmp_path / "model.gguf", "q5_0", "cpu", say=lambda line: None)
    assert stopped.value.exit_code == 143 and stopped.value.signal_name == "SIGTERM"
    assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) is handler



def test_sigterm_while_saving_a_hugging_face_folder_leaves_the_previous_one(exported, tmp_path, monkeypatch):
    """The same for --format hf: SIGTERM once the weights are saved in the staging folder removes it, and the
    folder --force would have replaced is intact."""
    import signal

    from transformers import PreTrainedTokenizerBase

    from your_ai.eval.export import merge_adapter
    from your_ai.files import Interrupted

    adapter, _, _, _ = exported
    output = tmp_path / "merged"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    save = PreTrainedTokenizerBase.save_pretrained

    def save_then_signal(self, *args, **kwargs):
        save(self, *args, **kwargs)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", save_then_signal)
    with pytest.raises(Interrupted):
        merge_adapter(adapter, output, "cpu", force=True)
    assert [path.name for path in tmp_path.iterdir()] == ["merged"] and (output / "keep.txt").read_text() == "mine"

# ---------------------------------------------------------------------------- GGUF in

def test_a_gguf_model_trains_and_the_next_command_reuses_its_conversion(exported, tmp_path, capsys, monkeypatch):
    from your_ai.model import gguf_input
    from your_ai.train.args import TrainingArgs
    from your_ai.train.loop import train

    _, _, _, files = exported
    gguf = files["q8_0"]
    stale = your_ai_cache_dir() / "gguf" / f".{file_sha256(gguf)}.killed"  # a killed conversion's
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "config.json").write_text("{}")
    train(TrainingArgs(model=str(gguf), output_dir=str(tmp_path / "run"), max_steps=2, lora_rank=4,
                       max_seq_length=32, batch_size=2, tensorboard=False, device="cpu"))
    captured = capsys.readouterr()
    assert "Converting tiny-q8_0.gguf (llama, F16, Q8_0) into a Hugging Face model, once" in captured.err
    assert "holds quantized weights (Q8_0)" in captured.err and "step 2/2" in captured.out
    assert f"Model: {gguf} " in captured.out
    assert f'"base_model_name_or_path": "{gguf}"' in (tmp_path / "run" / "adapter_config.json").read_text()

    monkeypatch.setattr(gguf_input, "_announced", set())  # as in the next command's process
    resolved = resolve_model(str(gguf))
    assert f"Using {gguf.name}, converted before" in capsys.readouterr().err
    assert resolved.source == "gguf" and resolved.path.parent == your_ai_cache_dir() / "gguf"
    assert (resolved.path / "model.safetensors").is_file() and resolved.label == gguf.name
    assert not [path for path in resolved.path.parent.iterdir() if path.name.startswith(f".{resolved.path.name}.")]
    assert not stale.exists()


def test_a_folder_holding_one_gguf_file_is_that_model(exported, tmp_path):
    _, _, _, files = exported
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(files["q8_0"])
    assert resolve_model(str(folder)).gguf == folder / "model.gguf"
    (folder / "other.gguf").symlink_to(files["f16"])
    with pytest.raises(InvalidModelNameError, match=r"holds 2 GGUF files \(model.gguf, other.gguf\)"):
        resolve_model(str(folder))


def test_a_truncated_or_foreign_gguf_file_fails_in_one_line(exported, tmp_path):
    import gguf

    _, _, _, files = exported
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(files["f16"].read_bytes()[:100_000])
    result = CliRunner().invoke(main, ["generate", "--model", str(truncated), "--prompt", "hi"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert str(truncated) in line and "not a readable GGUF file" in line

    foreign = tmp_path / "foreign.gguf"
    writer = gguf.GGUFWriter(foreign, "rwkv7")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match=r"foreign.gguf: GGUF architecture 'rwkv7' cannot be loaded"):
        resolve_model(str(foreign))


# ---------------------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def real_export(default_model_snapshot, tmp_path_factory):
    from your_ai.model.resolve import DEFAULT_MODEL

    root = tmp_path_factory.mktemp("gguf-real")
    adapter = make_adapter(root / "adapter", base_name=DEFAULT_MODEL, model=DEFAULT_MODEL)
    path = export_gguf(adapter, root / "smollm2-f16.gguf", "f16", "cpu", say=lambda line: None)
    im = load_for_inference(None, adapter, "cpu")
    return path, im.model.merge_and_unload(), im.tokenizer


@pytest.mark.real_model
@pytest.mark.slow
def test_the_default_models_export_matches_the_gguf_llama_cpp_made_of_it(real_export):
    """The packaged SmolLM2 GGUF was written by llama.cpp's converter: ours has the same keys' values,
    tensor names and tokenizer."""
    import gguf

    from your_ai.model.default_model import packaged_gguf

    path, _, _ = real_export
    ours, theirs = gguf.GGUFReader(path), gguf.GGUFReader(packaged_gguf())
    for key in ("general.architecture", "llama.block_count", "llama.context_length", "llama.embedding_length",
                "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
                "llama.rope.dimension_count", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        assert ours.fields[key].contents() == pytest.approx(theirs.fields[key].contents()), key
    assert {t.name: tuple(t.shape) for t in ours.tensors} == {t.name: tuple(t.shape) for t in theirs.tensors}


@pytest.mark.real_model
@pytest.mark.slow
def test_the_default_models_export_continues_as_the_merged_model(real_export):
    from transformers import AutoModelForCausalLM

    path, merged, tokenizer = real_export
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected = merged.generate(**ids, max_new_tokens=8, do_sample=False)
        assert loaded.generate(**ids, max_new_tokens=8, do_sample=False).tolist() == expected.tolist()


@pytest.mark.real_model
@pytest.mark.slow
def test_llama_cpp_runs_the_export_like_transformers(real_export):
    llama_cpp = pytest.importorskip("llama_cpp")
    path, merged, tokenizer = real_export
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False)
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert llm.tokenize(prompt.encode(), add_bos=False) == ids[0].tolist()
    with torch.no_grad():
        expected = tokenizer.decode(merged.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:])
    assert llm(prompt, max_tokens=6, temperature=0)["choices"][0]["text"] == expected


@pytest.mark.real_model
@pytest.mark.slow
def test_the_default_models_q4_1_export_is_typed_as_llama_quantize_types_it(real_export):
    """The packaged SmolLM2 Q4_1 file was made by llama.cpp's llama-quantize: the q4_1 export stores every tensor
    in the same type (the tied token embedding at Q8_0) under the same file type, and transformers reading it
    back continues a chat as the merged model does. (The packaged file is what the default model's weights came
    from, so they lie on Q4_1's grid already, but for the adapter's changes.)"""
    import gguf
    from transformers import AutoModelForCausalLM

    from your_ai.model.default_model import packaged_gguf

    f16, merged, tokenizer = real_export
    path = export_gguf(f16.parent / "adapter", f16.parent / "smollm2-q4_1.gguf", "q4_1", "cpu", say=lambda line: None)
    ours, theirs = gguf.GGUFReader(path), gguf.GGUFReader(packaged_gguf())
    assert {t.name: t.tensor_type.name for t in ours.tensors} == {t.name: t.tensor_type.name for t in theirs.tensors}
    assert ours.fields["general.file_type"].contents() == theirs.fields["general.file_type"].contents() == 3
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected, got = merged(**ids).logits, loaded(**ids).logits
        assert (got - expected).norm() < 0.05 * expected.norm()
        expected = merged.generate(**ids, max_new_tokens=8, do_sample=False)
        assert loaded.generate(**ids, max_new_tokens=8, do_sample=False).tolist() == expected.tolist()
