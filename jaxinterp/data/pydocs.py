"""Python's own documentation strings: an offline text corpus that needs no download.

`stdlib_docstrings()` collects the docstrings of the public classes, functions and methods
of a fixed list of standard-library modules (plus each module's own docstring), in a
deterministic order. It serves as a small language-modelling corpus (the MoA experiment)
and as a many-class text-classification set, "which module does this docstring document?"
(the PBML experiment). The texts depend on the Python version that runs it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Sequence

from jaxinterp.errors import ArgumentError, shown

# Modules that import without side effects and carry substantial documentation.
MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "asyncio", "base64", "calendar", "collections", "configparser", "contextlib",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "enum", "ftplib", "functools", "gzip", "http.client",
    "imaplib", "inspect", "ipaddress", "itertools", "json", "logging", "mailbox", "math", "mimetypes",
    "multiprocessing", "os", "pathlib", "platform", "poplib", "queue", "random", "re", "selectors", "shlex",
    "shutil", "smtplib", "socket", "sqlite3", "ssl", "statistics", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "time", "timeit", "tokenize", "traceback", "types", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
)


@dataclasses.dataclass(frozen=True)
class Doc:
    """One docstring: the module it documents, the object's qualified name, and the text."""

    module: str
    name: str
    text: str


def _owned(obj: object, module: str) -> bool:
    return str(getattr(obj, "__module__", "") or "").startswith(module.split(".")[0])


def stdlib_docstrings(modules: Sequence[str] = MODULES, *, min_chars: int = 40) -> list[Doc]:
    """Docstrings (at least `min_chars` long) of `modules`' public classes, functions and methods."""
    if not modules:
        raise ArgumentError("modules: expected at least one module name, found none")
    docs = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ArgumentError(f"modules: cannot import {module_name!r}: {shown(str(error), 300)}") from None
        found = [(module_name, inspect.getdoc(module))]
        for name, obj in inspect.getmembers(module):
            if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)) or not _owned(obj, module_name):
                continue
            found.append((name, inspect.getdoc(obj)))
            if inspect.isclass(obj):
                found += [
                    (f"{name}.{member}", inspect.getdoc(method)) for member, method in inspect.getmembers(obj)
                    if not member.startswith("_") and inspect.isroutine(method)
                    and getattr(method, "__qualname__", "").startswith(f"{obj.__name__}.")
                ]
        docs += [Doc(module_name, name, text) for name, text in found if text and len(text) >= min_chars]
    return docs
