"""`attribute`: the one entry point of every attribution method.

    import jaxinterp as ji
    from jaxinterp.attribution import attribute
    from jaxinterp.multimodal import encode

    batch = encode(model, "what colour is the square ?", image, answers="red")
    out = attribute(model, batch, method="llava_cam")              # every layer, one backward
    out.image            # [layers, B, N, rows, cols] maps over each image's patch grid
    attribute(model, batch, method="llava_cam", samples=50)        # smooth: 50 noisy copies, one vmap
    attribute(model, batch, method="integrated_gradients", region="tokens")

The target defaults to the teacher-forced answer (the sum of its token logits; Diffusion-CAM:
its contrastive objective); sites are globs (`blocks.*.resid_mid`), every matched site
mapped from the same pass; `region` picks a map over image patches or over tokens.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence

import numpy as np

from jaxinterp.attribution import diffusion_cam, gradcam, gradients, rollout, score_cam, tam
from jaxinterp.attribution.regions import check_region
from jaxinterp.attribution.request import Attribution, Request
from jaxinterp.attribution.targets import Target, answer_tokens
from jaxinterp.edits import compose
from jaxinterp.errors import ArgumentError, NonFiniteError
from jaxinterp.host import to_host, tree_to_host
from jaxinterp.models.sites import resolve

# method -> (function of a Request and its options, default site glob (None: the method reads no site))
METHODS: dict[str, tuple[Callable[..., Attribution], str | None]] = {
    "grad_cam": (gradcam.grad_cam, "blocks.*.resid_mid"),
    "grad_cam_pp": (gradcam.grad_cam_pp, "blocks.*.resid_mid"),
    # the paper's hook: each layer's post-attention norm output (`site="blocks.*.resid_mid"`: its input)
    "llava_cam": (gradcam.llava_cam, "blocks.*.mlp.in"),
    # the same map unnormalised and unthresholded: its size per layer is the information-flow intensity
    "llava_cam_intensity": (gradcam.llava_cam_intensity, "blocks.*.mlp.in"),
    "score_cam": (score_cam.score_cam, "projector.out"),
    "tam": (tam.tam, None),
    "rollout": (rollout.rollout, None),
    "grad_x_input": (gradients.grad_x_input, "embed"),
    "integrated_gradients": (gradients.integrated_gradients, "embed"),
    "diffusion_cam": (diffusion_cam.diffusion_cam, diffusion_cam.DEFAULT_SITE),
}
# method -> its default target of (model, batch); every other method explains the teacher-forced answer
DEFAULT_TARGETS: dict[str, Callable] = {"diffusion_cam": diffusion_cam.default_target}


def _default_region(model, batch) -> str:
    return "image" if model.config.image_grid is not None and batch.pixels is not None else "tokens"


def _check_options(name: str, fn: Callable, options: dict) -> None:
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("request", "combine")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ArgumentError(f"method {name!r}: unknown option(s) {unknown}; it takes {accepted}")


def attribute(
    model,
    inputs,
    target: Target | None = None,
    *,
    method: str = "llava_cam",
    site: str | Sequence[str] | None = None,
    region: str | None = None,
    edits=(),
    check_finite: bool = False,
    **options,
) -> Attribution:
    """Attribution maps of `target` over image patches and/or tokens.

    Args:
      model: a `jaxinterp.Model` (a vision-language model for image maps).
      inputs: text, token ids or a `Batch` (with pixels and an answer segment, e.g. from
        `jaxinterp.multimodal.encode(model, prompt, image, answers=...)`).
      target: a `Tokens`, `Contrast` or `Function` target (default: the teacher-forced answer;
        Diffusion-CAM: its contrast between the answer's second and first words).
      method: one of `METHODS`.
      site: site glob(s) whose activations are attributed (default per method, see `METHODS`);
        a glob matching every layer gives every layer's map from one pass.
      region: `image` (a map over each image's patch grid) or `tokens` (default: image when the
        model and inputs have one).
      edits: edits active during every forward of the attribution.
      check_finite: first run the forward with `Model.run(check_finite=True)` (raising
        `NonFiniteError` naming the first site that produced a NaN or infinity), then check
        every returned map and score, naming the method and the attributed site of a bad one.
      **options: the method's own options (see its function).
    """
    if method not in METHODS:
        raise ArgumentError(f"method: expected one of {sorted(METHODS)}, found {method!r}")
    fn, default_site = METHODS[method]
    _check_options(method, fn, options)
    batch = model.batch(inputs)
    region = region or _default_region(model, batch)
    check_region(region, model.config, batch)
    sites = ()
    if default_site is not None:
        default = default_site.format(third=model.config.num_layers // 3)
        patterns = (site,) if isinstance(site, str) else tuple(site or (default,))
        sites = resolve(patterns, model.sites, argument="site")
    elif site is not None:
        raise ArgumentError(f"site: method {method!r} reads no site (it explains from the logits or attention)")
    host = tree_to_host(batch)  # targets are chosen and checked on the host, also on a multi-host mesh
    if target is None:
        target = DEFAULT_TARGETS[method](model, host) if method in DEFAULT_TARGETS else answer_tokens(host)
    edits = compose(edits)
    for edit in edits:
        resolve(edit.sites, model.sites, argument=f"edit {type(edit).__name__}")
    if check_finite:
        model.run(batch, edits=edits, check_finite=True)
    request = Request(model=model, batch=batch, target=target.bind(host, model.next_token), sites=sites, region=region,
                      edits=edits)
    out = dataclasses.replace(fn(request, **options), method=method, sites=sites, batch=batch)
    if check_finite:
        _check_finite_maps(out)
    return out


def _check_finite_maps(out: Attribution) -> None:
    """Raises NonFiniteError naming the first map (site, region) or the scores holding a NaN or infinity."""
    labels = out.sites or ("(all)",)
    for region, maps in (("image", out.image), ("tokens", out.tokens)):
        if maps is None:
            continue
        finite = np.isfinite(to_host(maps)).reshape(len(maps), -1).all(axis=1)
        if not finite.all():
            site = labels[int(np.argmin(finite))] if len(maps) == len(labels) else "(all)"
            raise NonFiniteError(f"attribute {out.method!r}: NaN or infinity in the {region} map of site {site!r}")
    if not np.isfinite(to_host(out.values)).all():
        raise NonFiniteError(f"attribute {out.method!r}: the target's score is NaN or infinite")
