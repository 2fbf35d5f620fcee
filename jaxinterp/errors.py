"""The one exception family of jaxinterp.

Every error a user can cause (a bad checkpoint, a site name that does not exist, an edit
that changes a shape, an argument out of range) is a `JaxinterpError` whose message names
the file or argument, what was expected and what was found. Callers catch one type.
"""


class JaxinterpError(Exception):
    """Base class: a user-facing error with a one-line explanation and, where known, the fix."""


class CheckpointError(JaxinterpError):
    """A checkpoint file or directory is missing, malformed, or does not fit the model."""


class ConfigError(JaxinterpError):
    """A model configuration has a key whose value this library does not support."""


class SiteError(JaxinterpError):
    """A site pattern matches no site, or an edit broke the shape/dtype contract of a site."""


class ArgumentError(JaxinterpError, ValueError):
    """A public function got an argument outside its documented range."""


class NonFiniteError(JaxinterpError, FloatingPointError):
    """A forward (or gradient) produced NaN or infinity; the message names the first site."""


def shown(text: str, limit: int = 120) -> str:
    """`text` as it may appear in an error message: control characters escaped (a hostile file
    cannot drive the terminal) and cut to `limit` characters."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return escaped if len(text) <= limit else escaped[:limit] + "..."
