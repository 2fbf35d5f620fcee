"""Tokenizers from checkpoint folders, built without running any code a folder ships.

A `tokenizer_config.json` may name Python classes inside the checkpoint (`auto_map`);
transformers then asks, on a terminal, whether to run them. We always pass
`trust_remote_code=False`, so such a tokenizer is refused instead of offered. A failure
names its real cause: a missing package, that refusal, or the files transformers rejected.
"""

from __future__ import annotations

from typing import Any

from jaxinterp.errors import CheckpointError, shown


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
    """The transformers tokenizer saved in `folder`."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ImportError, ... on bad folders
        raise CheckpointError(f"{folder}: tokenizer: {_cause(e)}") from None
