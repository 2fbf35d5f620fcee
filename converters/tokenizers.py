"""Tokenizers from checkpoint folders, built without running any code a folder ships.

A `tokenizer_config.json` may name Python classes inside the checkpoint (`auto_map`);
transformers then asks, on a terminal, whether to run them. We always pass
`trust_remote_code=False`, so such a tokenizer is refused instead of offered.
"""

from __future__ import annotations

from typing import Any

from jaxinterp.errors import CheckpointError


def load_tokenizer(folder: str, **kwargs: Any) -> Any:
    """The transformers tokenizer saved in `folder` (`kwargs` go to `from_pretrained`, e.g. `gguf_file`)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **kwargs)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... on bad tokenizer files
        raise CheckpointError(
            f"{folder}: tokenizer: transformers could not build it ({type(e).__name__}: {e}); "
            "jaxinterp never runs code shipped with a checkpoint"
        ) from None
