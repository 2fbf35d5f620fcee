"""The torch-free GGUF tokenizer is token-for-token transformers' own GGUF tokenizer.

transformers' reference reads the file with its torch-based GGUF reader, so these tests
need the torch extra; the torch-free path itself is exercised in `test_torch_free.py`.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from jaxinterp.converters.gguf_file import GGUFFile
from jaxinterp.errors import CheckpointError
from tests import gguf_vocab

pytest.importorskip("torch")

FRAGMENTS = [
    "Hello world", "  leading spaces", "trailing spaces   ", "tabs\tand\ttabs", "new\nlines\n\n\nmany",
    "\r\nwindows\r\n", "    def f(x):\n        return x * 2\n", "if (a && b) { c(); }", "x = [1, 2, 3] # list",
    "naïve café résumé", "Ünïcödé ÅØÆ ß", "日本語のテキスト", "中文字符", "한국어 문장", "emoji 🙂🚀 and ❤️",
    "mixed 123 abc 4567 de", "3.14159e-10", "don't can't we'll they've I'd", "UPPER lower MiXeD",
    "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "<think>reasoning</think>", "<s> and </s> literally",
    "a" * 40, " ", "", "\u00a0non-breaking\u2009thin", "zero\u200bwidth", "arrows → ← ↑", "math ∑ ∫ √ ≠ ≤",
    "http://example.com/path?q=1&r=2", "C:\\Windows\\path", "'quoted' \"double\"", "end.",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Sum 2 and 3."},
     {"role": "assistant", "content": "5"}, {"role": "user", "content": "  and 4?\n"}],
    [{"role": "user", "content": "日本語で答えて 🙂"}],
]


def strings() -> list[str]:
    """Every fragment, and 180 deterministic pairs and triples of them with varied joins."""
    rng = np.random.default_rng(0)
    joins = ["", " ", "\n", "  ", "\t"]
    combos = [join.join(rng.choice(FRAGMENTS, size=int(rng.integers(2, 4))))
              for join in itertools.islice(itertools.cycle(joins), 180)]
    return FRAGMENTS + combos


def assert_same_tokenizer(ours, reference) -> None:
    texts = strings()
    assert len(texts) >= 200
    for text in texts:
        ids = reference(text)["input_ids"]
        assert ours(text)["input_ids"] == ids, text
        assert ours.decode(ids) == reference.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True), text
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(ours, name) == getattr(reference, name), name
    for conversation in CONVERSATIONS:
        for prompt in (True, False):
            rendered = reference.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt)
            assert ours.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt) == rendered


def reference_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def test_smollm2_tokenizer_matches_transformers_gguf_tokenizer(smollm2):
    from jaxinterp.cache import builtin_source

    path = builtin_source("smollm2")
    reference = reference_tokenizer(path)
    assert_same_tokenizer(GGUFFile(path).tokenizer(), reference)
    assert_same_tokenizer(smollm2.tokenizer, reference)  # as saved into, and restored from, the cache


@pytest.mark.parametrize("kind, add_bos", [("gpt2", None), ("gpt2", True), ("llama", None), ("llama", False)])
def test_tiny_vocabularies_match_transformers_gguf_tokenizer(tmp_path, kind, add_bos):
    path = str(tmp_path / f"{kind}.gguf")
    gguf_vocab.write(path, kind, add_bos=add_bos)
    ours, reference = GGUFFile(path).tokenizer(), reference_tokenizer(path)
    assert len(ours) == len(reference) > 300
    assert_same_tokenizer(ours, reference)


def test_special_token_id_outside_the_vocabulary_is_named(tmp_path):
    path = tmp_path / "bad.gguf"
    gguf_vocab.write(str(path), "gpt2")
    file = GGUFFile(path)
    file.metadata["tokenizer.ggml.eos_token_id"] = 10**6
    with pytest.raises(CheckpointError, match=r"tokenizer\.ggml\.eos_token_id: expected a token id in \[0, "):
        file.tokenizer()


def test_unsupported_tokenizer_kind_is_named(tmp_path):
    path = tmp_path / "bad.gguf"
    gguf_vocab.write(str(path), "gpt2")
    file = GGUFFile(path)
    file.metadata["tokenizer.ggml.model"] = "wordpiece-of-my-own"
    with pytest.raises(CheckpointError, match="tokenizer.ggml.model") as caught:
        file.tokenizer()
    assert "code" not in str(caught.value)
