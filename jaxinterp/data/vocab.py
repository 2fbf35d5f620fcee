"""Small word-level tokenizers for models trained here (synthetic tasks), as transformers tokenizers.

A `WordLevel` vocabulary with whitespace/punctuation splitting, the special tokens a chat
model needs (`<pad>`, `<unk>`, `<bos>`, `<eos>`, plus any extra such as `<image>` or
`<mask>`), and a minimal chat template, wrapped in `PreTrainedTokenizerFast` so that it
saves, loads, renders chats and reports character offsets like any Hugging Face tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SPECIAL = ("<pad>", "<unk>", "<bos>", "<eos>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} "
    "{% if m['role'] == 'assistant' %}{{ eos_token }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def word_tokenizer(words: Iterable[str], extra_special: Sequence[str] = ()):
    """A fast tokenizer over `words` (plus the roles and punctuation of the chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = list(SPECIAL) + list(extra_special)
    vocabulary = special + sorted(set(words) | {"user", "assistant", "system", ":", "?", ".", ","} - set(special))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
        additional_special_tokens=list(extra_special),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
