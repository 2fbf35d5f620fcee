"""Tokenizers from checkpoint folders, built without running any code a folder ships.

A `tokenizer_config.json` may name Python classes inside the checkpoint (`auto_map`);
transformers then asks, on a terminal, whether to run them. We always pass
`trust_remote_code=False`, so such a tokenizer is refused instead of offered. A failure
names its real cause: a missing package, that refusal, or the files transformers rejected.
"""

from __future__ import annotations

import os
from typing import Any

from jaxinterp.converters.files import TOKENIZER_LIMIT, regular_file
from jaxinterp.errors import CheckpointError, shown

# the files transformers may read from a tokenizer folder
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "chat_template.jinja",
                   "chat_template.json")


def _cause(error: Exception) -> str:
    """What went wrong, in the words a user can act on."""
    text = shown(str(error), 300)
    if isinstance(error, ImportError):
        missing = getattr(error, "name", None)
        fix = f"; install it with `pip install {missing}`" if missing else ""
        return f"a package it needs is missing ({type(error).__name__}: {text}){fix}"
    if "trust_remote_code" in str(error):
        return ("refused: the folder asks to run Python code it ships (auto_map), "
                "and jaxinterp never runs code shipped with a checkpoint")
    return f"transformers could not build it from the folder's files ({type(error).__name__}: {text})"


def load_tokenizer(folder: str) -> Any:
    """The transformers tokenizer saved in `folder`, whose tokenizer files must be regular files inside it."""
    from transformers import AutoTokenizer

    for name in TOKENIZER_FILES:
        if os.path.lexists(os.path.join(folder, name)):
            regular_file(os.path.join(folder, name), folder=folder, limit=TOKENIZER_LIMIT)

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ImportError, ... on bad folders
        raise CheckpointError(f"{folder}: tokenizer: {_cause(e)}") from None
