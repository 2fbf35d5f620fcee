"""A self-contained HTML report of one attribution call, readable without Python.

One file: inline CSS, figures as base64 PNGs, no scripts and no remote resources; every token
string and label HTML-escaped; written atomically (a temporary file in the same folder,
then renamed), so a reader never sees half a report. A map attribution's report holds a
summary table, each image with the chosen site's map drawn over it, the per-site grid when
several sites were mapped, and the text as a token heat strip (image placeholders folded into
one chip); a perturbation attribution's holds the summary, the prompt as a strip coloured by
each feature's value, and the table of features with their values and standard errors.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_hex

from jaxinterp.viz.overlay import image_overlay, layer_grid
from jaxinterp.viz.token_strip import score_norm

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; line-height: 1.4; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #eee; text-align: left; }
img { max-width: 100%; } .strip { font-family: monospace; line-height: 2.1; }
.tok { padding: 0.15em 0.2em; margin: 0 0.1em; border-radius: 0.2em; white-space: pre; }
.target { outline: 2px solid #000; } .note { color: #666; font-size: 0.9em; }
.bar { display: inline-block; width: 12em; height: 0.8em; vertical-align: middle; border: 1px solid #999; }
"""


# no scripts, no network: inline styles and embedded (data:) images only
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _png(fig: plt.Figure) -> str:
    """The figure as an inline `data:` URI (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_atomic(path: str | os.PathLike, text: str) -> str:
    """Writes `text` to `path` through a temporary file in the same folder and a rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".report-", suffix=".tmp")
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(handle, 0o666 & ~mask)  # mkstemp makes 0600: a colleague could not open the report
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def display_image(pixels: np.ndarray, processor: Any = None) -> np.ndarray:
    """[H, W, 3] floats in [0, 1] from normalised pixel values [C, H, W] (the processor's mean/std undone)."""
    x = np.asarray(pixels, np.float32)
    mean = getattr(processor, "image_mean", None)
    if mean is not None:
        x = x * np.asarray(processor.image_std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    else:
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
    return np.clip(np.moveaxis(x, 0, -1), 0.0, 1.0)


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Display strings of token ids (each decoded alone; newlines shown as a return sign)."""
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([int(i)]).replace("\n", "\u21b5") or "\u2205" for i in ids]


def strip_html(texts: Sequence[str], scores: np.ndarray, *, targets: Sequence[int] = (),
               image: np.ndarray | None = None) -> str:
    """A token heat strip as HTML spans; consecutive image tokens (`image` [T] bool) fold into one chip."""
    scores = np.asarray(scores, np.float32)
    norm, cmap = score_norm(scores)
    colours = plt.get_cmap(cmap)
    spans, i = [], 0
    while i < len(texts):
        j = i + 1
        if image is not None and image[i]:
            while j < len(texts) and image[j]:
                j += 1
            label, score = f"\u27e8image \u00d7{j - i}\u27e9", float(scores[i:j].mean())
        else:
            label, score = texts[i], float(scores[i])
        rgba = colours(norm(score))
        ink = "#fff" if np.mean(rgba[:3]) < 0.45 else "#000"
        marked = " target" if any(i <= t < j for t in targets) else ""
        spans.append(f'<span class="tok{marked}" style="background:{to_hex(rgba)};color:{ink}" '
                     f'title="{score:.4g}">{html.escape(label)}</span>')
        i = j
    low, high = norm.vmin, norm.vmax
    gradient = ", ".join(to_hex(colours(x)) for x in np.linspace(0, 1, 9))
    legend = (f'<p class="note">{low:.3g} <span class="bar" style="background:linear-gradient(to right, {gradient})">'
              f'</span> {high:.3g}{" &nbsp; (boxed: the explained tokens)" if len(targets) else ""}</p>')
    return f'<div class="strip">{"".join(spans)}</div>{legend}'


def _table(rows: Mapping[str, Any]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def attribution_report(path: str | os.PathLike, attribution, model, *, row: int = 0, site: str | None = None,
                       title: str | None = None, images: Sequence[np.ndarray] | None = None,
                       targets: Sequence[int] = (), notes: Mapping[str, Any] | None = None) -> str:
    """Writes the HTML report of row `row` of an `Attribution` and returns its path.

    Args:
      model: the attributed `jaxinterp.Model` (its tokenizer and image processor label the report).
      site: the site whose maps are drawn over the images and the text (default: the last one).
      images: the images as shown to people, [H, W, 3] each (default: the pixels, un-normalised).
      targets: positions of the explained tokens, boxed in the strip.
      notes: extra rows of the summary table (e.g. the prompt, the answer, metrics).
    """
    a, batch = attribution, attribution.batch
    sites = list(a.sites) or [a.method]
    chosen = sites.index(site) if site is not None else len(sites) - 1
    title = title or f"{a.method} attribution"
    summary = {"model": getattr(model, "source", "") or model.config.family, "method": a.method,
               "sites": ", ".join(a.sites) or "(none: logits / attention)", "shown site": sites[chosen],
               "target score": f"{float(np.asarray(a.values)[row]):.4g}", **(notes or {})}
    body = [f"<h1>{html.escape(title)}</h1>", _table(summary)]
    if a.image is not None:
        maps = np.asarray(a.image)[:, row]  # [S, N, rows, cols]
        pixels = np.asarray(batch.pixels[row])
        shown = images or [display_image(p, model.processor) for p in pixels]
        body.append("<h2>Image</h2>")
        for n, picture in enumerate(shown):
            fig = image_overlay(picture, maps[chosen, n], title=f"{a.method} at {sites[chosen]}")
            body.append(f'<p><img alt="{html.escape(f"map over image {n}")}" src="{_png(fig)}"></p>')
            if len(sites) > 1:
                fig = layer_grid(picture, maps[:, n], sites, title=f"{a.method}, every site (shared scale)")
                body.append(f'<p><img alt="maps of every site" src="{_png(fig)}"></p>')
    if a.tokens is not None:
        ids = np.asarray(batch.tokens[row])[np.asarray(batch.mask[row])]
        scores = np.asarray(a.tokens)[chosen, row][: len(ids)]
        image_id = model.config.image_token_id
        body += ["<h2>Tokens</h2>", strip_html(token_texts(model.tokenizer, ids), scores, targets=targets,
                                               image=None if image_id is None else ids == image_id)]
    body.append('<p class="note">Written by jaxinterp. Maps are shown as computed (colour bars give their '
                'scale); image maps are drawn over the image with bilinear smoothing.</p>')
    return _write_document(path, title, body)


def feature_report(path: str | os.PathLike, result, model, *, title: str | None = None,
                   notes: Mapping[str, Any] | None = None) -> str:
    """Writes the HTML report of a `FeatureAttribution` (its prompt as a strip coloured by each
    feature's value spread over its tokens, and a table of the features) and returns its path."""
    tokenizer = model.tokenizer
    answer = tokenizer.decode(list(result.answer_tokens)) if result.answer_tokens and tokenizer is not None \
        else "the target"
    title = title or f"{result.method} attribution of {answer!r}"
    summary = {"model": getattr(model, "source", "") or model.config.family, "method": result.method,
               "removal": result.removal, "target": f"log p({answer!r})", "all features kept": f"{result.full:.4g}",
               "all removed": f"{result.empty:.4g}", "coalitions scored": result.evaluations,
               "token slots served from the cached prompt": f"{result.prefix_share:.1%}", **(notes or {})}
    rows = "".join(f"<tr><td>{html.escape(text)}</td><td>{value:+.4g}</td><td>{_stderr(err)}</td></tr>"
                   for text, value, err in zip(result.features, result.values, result.stderr))
    body = [f"<h1>{html.escape(title)}</h1>", _table(summary), "<h2>Prompt</h2>",
            strip_html(token_texts(tokenizer, result.prompt_tokens), result.token_values()),
            "<h2>Features</h2>", f"<table><tr><th>feature</th><th>value</th><th>standard error</th></tr>{rows}</table>",
            '<p class="note">Written by jaxinterp. A feature\'s value is spread evenly over its tokens in the '
            'strip; tokens outside every feature show 0.</p>']
    return _write_document(path, title, body)


def _stderr(value: float) -> str:
    return "exact" if np.isnan(value) else f"{value:.3g}"


def _write_document(path: str | os.PathLike, title: str, body: Sequence[str]) -> str:
    """The report's HTML page (inline CSS, the content security policy) written atomically to `path`."""
    document = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
                f"<title>{html.escape(title)}</title>"
                f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    return write_atomic(path, document)
