"""The tokenizer a GGUF file describes, built from its parsed metadata without torch.

transformers can build a GGUF tokenizer itself, but its GGUF reader imports torch, which
the base install does not have. Its converters from GGUF fields to a `tokenizers` model
(`convert_gguf_tokenizer`: byte-level BPE, sentencepiece BPE, unigram, with the file's
control and user-defined tokens and its split regex) need no torch, so we feed them the
`tokenizer.ggml.*` fields that `gguf_header` has already parsed and checked, and wrap the
result in a fast tokenizer with the file's special tokens, BOS/EOS flags and chat template.
The result is token-for-token transformers' own GGUF tokenizer (tested in
`tests/test_gguf_tokenizer.py`).
"""

from __future__ import annotations

from typing import Any

from jaxinterp.errors import CheckpointError, shown

# GGUF metadata key -> the field name transformers' converters read, per group.
_FIELDS = {
    "tokenizer.ggml.model": "tokenizer_type",
    "tokenizer.ggml.pre": "pre_tokenizer_type",
    "tokenizer.ggml.tokens": "tokens",
    "tokenizer.ggml.scores": "scores",
    "tokenizer.ggml.token_type": "token_type",
    "tokenizer.ggml.merges": "merges",
    "tokenizer.ggml.precompiled_charsmap": "precompiled_charsmap",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
    "tokenizer.ggml.add_space_prefix": "add_prefix_space",
}
_OPTIONS = {
    "tokenizer.chat_template": "chat_template",
    "tokenizer.ggml.add_bos_token": "add_bos_token",
    "tokenizer.ggml.add_eos_token": "add_eos_token",
}
_SPECIAL = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
            "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}
# llama.cpp's defaults where a file states no flag: a sentencepiece vocabulary gets a BOS.
_ADD_BOS_DEFAULT = {"llama": True}


def _checked_fields(path: str, metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(converter fields, tokenizer options) from `metadata`, every special id inside the vocabulary."""
    fields = {name: metadata[key] for key, name in _FIELDS.items() if key in metadata}
    options = {name: metadata[key] for key, name in _OPTIONS.items() if key in metadata}
    tokens = fields["tokens"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{path}: metadata field tokenizer.ggml.tokens: expected a non-empty list of strings")
    kind = fields.get("tokenizer_type")
    if kind in _ADD_BOS_DEFAULT:
        options.setdefault("add_bos_token", _ADD_BOS_DEFAULT[kind])
    for name, key in _SPECIAL.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not (type(token_id) is int and 0 <= token_id < len(tokens)):
            raise CheckpointError(f"{path}: metadata field tokenizer.ggml.{key}: expected a token id in "
                                  f"[0, {len(tokens)}), found {shown(repr(token_id))}")
        options[name] = tokens[token_id] if token_id is not None else None
    return fields, options


def gguf_tokenizer(path: str, metadata: dict[str, Any]) -> Any:
    """The fast tokenizer described by the GGUF metadata of the file `path` (already parsed)."""
    fields, options = _checked_fields(path, metadata)
    try:
        from transformers import PreTrainedTokenizerFast
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    except ImportError as e:
        raise CheckpointError(f"{path}: tokenizer: needs transformers' GGUF tokenizer converters, which did not "
                              f"import ({type(e).__name__}: {shown(str(e), 300)}); "
                              "reinstall jaxinterp to get the transformers version it declares") from None
    architecture = metadata["general.architecture"]
    try:
        backend, extra = convert_gguf_tokenizer(architecture, fields)
    except ValueError as e:  # an unsupported tokenizer.ggml.model
        raise CheckpointError(f"{path}: metadata field tokenizer.ggml.model: {shown(str(e), 300)}") from None
    except Exception as e:  # a malformed vocabulary, merges or token types: the converters raise any type
        raise CheckpointError(f"{path}: tokenizer: the {shown(repr(fields.get('tokenizer_type')))} vocabulary in "
                              f"the metadata is malformed ({type(e).__name__}: {shown(str(e), 300)})") from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{**options, **extra})
