"""Tiny GGUF files that carry a real (trained) tokenizer, for tokenizer parity tests.

A BPE vocabulary is trained with `tokenizers` on a small corpus and written in llama.cpp's
two layouts: `gpt2` (byte-level BPE with merges, control and user-defined tokens) and
`llama` (sentencepiece-style pieces with byte fallback and scores, merges left for the
reader to derive). The model part is a one-block Llama sized to the vocabulary, so
transformers' own GGUF loader accepts the file as the reference.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n",
    "Paris is the capital of France; Berlin is the capital of Germany.", "for i in range(10): print(i ** 2)",
    "Ünïcödé tëxt, naïve café, résumé — and 日本語のテキスト, 中文, 한국어.", "    indented\tline\n\n\nnext",
    "Numbers 12345 and 3.14159 and 2,718 and -42.", "{\"key\": [1, 2, 3], \"other\": null}",
    "I'm sure they'll say we've done what you'd expect.", "SELECT name FROM users WHERE id = 7;",
] * 4
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<think>"]
NORMAL, UNKNOWN, CONTROL_TYPE, USER_DEFINED_TYPE, BYTE = 1, 2, 3, 4, 6


def _trained(model_kind: str, size: int) -> tuple[list[str], list[str]]:
    """(tokens in id order, merges "a b") of a BPE trained on `CORPUS`."""
    if model_kind == "gpt2":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=CONTROL + USER_DEFINED,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        tokenizer = Tokenizer(models.BPE(byte_fallback=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + USER_DEFINED
        trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return tokens, [m if isinstance(m, str) else " ".join(m) for m in merges]


def _token_type(token: str) -> int:
    if token in CONTROL or token in ("<s>", "</s>"):
        return CONTROL_TYPE
    if token in USER_DEFINED:
        return USER_DEFINED_TYPE
    if token == "<unk>":
        return UNKNOWN
    return BYTE if token.startswith("<0x") and token.endswith(">") and len(token) == 6 else NORMAL


def write(path: str, model_kind: str, *, size: int = 600, add_bos: bool | None = None) -> list[str]:
    """Writes a GGUF with a `model_kind` ("gpt2" or "llama") vocabulary to `path`; returns its tokens."""
    tokens, merges = _trained(model_kind, size)
    writer = gguf.GGUFWriter(path, "llama")
    hidden = 8
    for add, value in ((writer.add_block_count, 1), (writer.add_context_length, 64),
                       (writer.add_embedding_length, hidden), (writer.add_feed_forward_length, 16),
                       (writer.add_head_count, 2), (writer.add_head_count_kv, 1), (writer.add_vocab_size, len(tokens))):
        add(value)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model(model_kind)
    writer.add_token_list(tokens)
    writer.add_token_types([_token_type(t) for t in tokens])
    if model_kind == "gpt2":
        writer.add_token_merges(merges)
        writer.add_bos_token_id(tokens.index("<|endoftext|>"))
        writer.add_eos_token_id(tokens.index("<|im_end|>"))
        writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    else:
        writer.add_token_scores([-float(i) for i in range(len(tokens))])
        writer.add_bos_token_id(tokens.index("<s>"))
        writer.add_eos_token_id(tokens.index("</s>"))
        writer.add_unk_token_id(tokens.index("<unk>"))
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,),
              "blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (hidden // 2, hidden),
              "blk.0.attn_v.weight": (hidden // 2, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_gate.weight": (16, hidden), "blk.0.ffn_up.weight": (16, hidden),
              "blk.0.ffn_down.weight": (hidden, 16)}
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tokens
