"""The tokenizer of a GGUF export, as llama.cpp reads it (``tokenizer.ggml.*`` and ``tokenizer.chat_template``).

Two kinds of Hugging Face tokenizers are written:

- byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2): ``tokenizer.ggml.model = gpt2`` with the tokens,
  their types, the merges and the name of the pre-tokenizer, which llama.cpp needs to split text the way
  the model was trained (recognised from the ``pre_tokenizer`` of ``tokenizer.json``, ``pre_tokenizer_name``);
- SentencePiece BPE with byte fallback (Llama 2, Mistral): ``tokenizer.ggml.model = llama`` with the
  tokens, their scores (a piece's rank: earlier pieces merge first) and types.

The token list has one entry per row of the embedding matrix; rows without a token get ``[PAD<id>]``
(unused). Special token ids, whether a BOS/EOS token is added, the merges and the chat template come from
the tokenizer's saved files through the ``gguf`` package's ``SpecialVocab``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from your_ai.errors import UserError

# The split patterns of the byte-level BPE pre-tokenizers llama.cpp knows by name. The two start alike
# and differ in how digits are grouped: Llama 3 in runs of up to three, Qwen2 one by one.
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
PRE_TOKENIZER_PATTERNS = {
    "llama-bpe": _WORDS + r"\p{N}{1,3}|",
    "qwen2": _WORDS + r"\p{N}|",
}
DEFAULT_PRE_TOKENIZER = "default"
DIGITS = "0123456789"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class TokenizerExportError(UserError):
    """A tokenizer that cannot be written into a GGUF file; the message says which and why."""


def pre_tokenizer_name(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for the byte-level pre-tokenizer of ``tokenizer_json``, or None when not recognised:
    ``llama-bpe`` and ``qwen2`` (their split patterns); for the plain byte-level regex, ``smollm`` when every
    digit is a token of its own (llama.cpp then splits digits first, as for SmolLM, with the same tokens
    and no clean-up of spaces when decoding), else ``gpt-2``. Digits split first (a ``Digits`` step before
    the byte-level one) are ``smollm`` too."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        vocab = (tokenizer_json.get("model") or {}).get("vocab") or {}
        single_digits = vocab and not any(len(token) > 1 and any(c in DIGITS for c in token) for token in vocab)
        return "smollm" if single_digits else "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        pattern = (parts[0].get("pattern") or {}).get("Regex", "")
        for name, start in PRE_TOKENIZER_PATTERNS.items():
            if pattern.startswith(start):
                return name
    return None


def add_tokenizer(writer, tokenizer, folder: Path, rows: int, say) -> None:
    """Write ``tokenizer``, saved in ``folder`` (``tokenizer.json`` and its config), into ``writer``, with
    ``rows`` tokens (the embedding matrix's rows); ``say`` reports what a reader should know."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerExportError("the tokenizer has no tokenizer.json (a fast tokenizer): it cannot be "
                                   "written into a GGUF file")
    tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer_json.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        _add_sentencepiece_tokens(writer, tokenizer, rows)
        merges = False
    elif model.get("type") == "BPE":
        _add_byte_level_tokens(writer, tokenizer, tokenizer_json, rows, say)
        merges = True
    else:
        raise TokenizerExportError(f"tokenizer model {model.get('type')!r} cannot be written into a GGUF file; "
                                   "byte-level BPE and SentencePiece BPE tokenizers can")
    vocab_log = logging.getLogger("gguf.vocab")  # its notes on the tokenizer's post-processor are not the user's
    level = vocab_log.level
    vocab_log.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=rows)
    finally:
        vocab_log.setLevel(level)
    special.add_special_token.update(_added_special_tokens(tokenizer))
    special.add_to_gguf(writer, quiet=True)


def _added_special_tokens(tokenizer) -> dict[str, bool]:
    """Whether the tokenizer puts its BOS / EOS token around a text, as it does (not as its config says)."""
    ids = tokenizer("a")["input_ids"]
    added = {}
    if tokenizer.bos_token_id is not None:
        added["bos"] = bool(ids) and ids[0] == tokenizer.bos_token_id
    if tokenizer.eos_token_id is not None:
        added["eos"] = bool(ids) and ids[-1] == tokenizer.eos_token_id
    return added


def _token_table(tokenizer, rows: int) -> tuple[dict[int, str], set[int], set[int]]:
    """Token of each id, the ids of added tokens, and of special ones."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items() if index < rows}
    added = tokenizer.added_tokens_decoder
    special = {index for index, token in added.items() if token.special} | set(tokenizer.all_special_ids)
    return by_id, set(added), special


def _add_byte_level_tokens(writer, tokenizer, tokenizer_json: dict, rows: int, say) -> None:
    import gguf

    by_id, added, special = _token_table(tokenizer, rows)
    tokens, types = [], []
    for index in range(rows):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in special:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        elif index in added:
            tokens.append(token)
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    pre = pre_tokenizer_name(tokenizer_json)
    if pre is None:
        pre = DEFAULT_PRE_TOKENIZER
        say("Note: the tokenizer's pre-tokenizer is not one llama.cpp knows by name; written as 'default', "
            "so llama.cpp may split some text differently from transformers")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)


def _add_sentencepiece_tokens(writer, tokenizer, rows: int) -> None:
    import gguf

    by_id, added, special = _token_table(tokenizer, rows)
    tokens, scores, types = [], [], []
    for index in range(rows):
        token = by_id.get(index)
        if token is None:
            token, kind = f"[PAD{index}]", gguf.TokenType.UNUSED
        elif index in special:
            kind = gguf.TokenType.CONTROL
        elif _BYTE_TOKEN.fullmatch(token):
            kind = gguf.TokenType.BYTE
        elif index in added:
            kind = gguf.TokenType.USER_DEFINED
        elif index == tokenizer.unk_token_id:
            kind = gguf.TokenType.UNKNOWN
        else:
            kind = gguf.TokenType.NORMAL
        tokens.append(token)
        scores.append(0.0 if kind != gguf.TokenType.NORMAL else -float(index))
        types.append(kind)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre(DEFAULT_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
