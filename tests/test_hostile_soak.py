"""A randomized campaign over every hostile-input class: no hang, no raw traceback, no silent wrong result.

Each class draws random probes (a random composition of the class's hostile moves, with an
oracle that knows whether the input is valid) and tallies how each ended (`tests.hostile.Tally`):
a clean one-line refusal, an accepted input whose result passed its check (the original
logits, the PyTorch reference's logits, tokens inside the vocabulary), or a failure. The
default run draws a few probes per class from a fixed seed, so the machinery itself is
tested; `JAXINTERP_SOAK=1` draws many from a fresh seed (`JAXINTERP_SOAK_SEED=N` replays one)
and records the counts in `results/hostile_soak/<class>.json`, which SECURITY.md quotes.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import os
import pathlib
import random
import shutil
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import cli, models
from jaxinterp.converters import chat_template
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.models.gpt2 import GPT2Config
from jaxinterp.models.llama import LlamaConfig
from tests import gguf_raw
from tests.hostile import SOAK, Tally

PROBES = 500 if SOAK else 4  # per class
SEED = int(os.environ.get("JAXINTERP_SOAK_SEED", time.time_ns() % 2**31 if SOAK else 0))
RESULTS = pathlib.Path(__file__).parent.parent / "results" / "hostile_soak"
TOKENS = np.array([[1, 5, 9, 17, 33, 2]], np.int32)
CONTROL = ["\x1b", "\x9b", "\x07", "\r", "\n", "\x00", "\x7f", "\u202e", "\u2028", "[2J", "]8;;", "a", "é", "中"]
CLASSES = ["files", "configs", "damage", "inputs", "escapes", "destinations", "cli", "templates"]


def hostile_text(rng: random.Random) -> str:
    return "".join(rng.choice(CONTROL) for _ in range(rng.randint(1, 12)))


def same_logits(expected: np.ndarray):
    def check(model) -> None:
        np.testing.assert_array_equal(np.asarray(model(TOKENS)), expected)
    return check


@pytest.fixture(scope="module")
def original(tiny_checkpoint, tmp_path_factory):
    """The tiny SmolLM2-like HF folder with a tokenizer, its converted directory, and its logits."""
    folder = tmp_path_factory.mktemp("soak") / "ckpt"
    shutil.copytree(tiny_checkpoint("smol")[0], folder)
    word_tokenizer("the cat sat on a mat".split()).save_pretrained(folder)
    converted = folder.parent / "converted"
    ji.convert(str(folder), str(converted), progress=False)
    model = ji.load(str(folder), progress=False)
    return {"folder": folder, "converted": converted, "logits": np.asarray(model(TOKENS)),
            "tokens": np.asarray(model.encode("the cat").tokens).tolist()}


# -- special files and paths -----------------------------------------------------------------


def _special(rng: random.Random, folder: pathlib.Path, name: str, outside: pathlib.Path) -> bool | None:
    """Replaces `folder/name` by a random special file; returns whether loading must succeed (None: either)."""
    path = folder / name
    kind = rng.choice(["fifo", "dev_zero", "dev_null", "link_out", "link_in", "hardlink", "directory", "socket",
                       "oversized", "removed"])
    shutil.copy(path, outside / name)
    os.remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind in ("dev_zero", "dev_null"):
        os.symlink(f"/dev/{kind[4:]}", path)
    elif kind == "link_out":
        os.symlink(outside / name, path)
    elif kind == "link_in":
        shutil.copy(outside / name, folder / f".kept-{name}")
        os.symlink(f".kept-{name}", path)
    elif kind == "hardlink":
        os.link(outside / name, path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
    elif kind == "oversized":
        shutil.copy(outside / name, path)
        with open(path, "r+b") as f:
            f.truncate(1 << 30)  # sparse: costs no disk
    if kind in ("link_in", "hardlink"):
        return True
    if kind == "removed" and name.startswith("tokenizer"):
        return None  # one tokenizer file of the two may suffice
    return False


def _index(rng: random.Random, folder: pathlib.Path, outside: pathlib.Path) -> bool:
    """Moves the weights into one shard named by an index whose entry is drawn at random."""
    shard = "model-00001-of-00001.safetensors"
    os.replace(folder / "model.safetensors", folder / shard)
    shutil.copy(folder / shard, outside / shard)
    entry, valid = rng.choice([(shard, True), (str(outside / shard), False), (f"../{folder.name}/{shard}", False),
                               ("missing.safetensors", False), ("linked.safetensors", False)])
    if entry == "linked.safetensors":
        os.symlink(outside / shard, folder / entry)
    from safetensors import safe_open
    with safe_open(str(folder / shard), "numpy") as f:
        names = list(f.keys())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: entry for n in names}}))
    return valid


def soak_files(tally: Tally, rng: random.Random, original, tmp_path: pathlib.Path) -> None:
    for i in range(PROBES):
        folder, outside = tmp_path / f"files{i}" / "ckpt", tmp_path / f"files{i}" / "outside"
        shutil.copytree(original["folder"], folder)
        outside.mkdir()
        names = rng.sample(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "index"],
                           rng.randint(1, 2))
        if "index" in names and "model.safetensors" in names:
            names.remove("model.safetensors")  # the index moves the weights itself
        verdicts = [_index(rng, folder, outside) if n == "index" else _special(rng, folder, n, outside) for n in names]
        valid = False if False in verdicts else (None if None in verdicts else True)

        def check(result) -> None:
            model, tokens = result
            same_logits(original["logits"])(model)
            assert tokens == original["tokens"], "the tokenizer changed"

        def call():
            model = ji.load(str(folder), progress=False)
            return model, np.asarray(model.encode("the cat").tokens).tolist()  # no tokenizer left: a refusal

        tally.probe(f"files {names} -> {sorted(os.listdir(folder))}", call, valid=valid, check=check, seconds=30)
        shutil.rmtree(folder.parent)


# -- numbers in config.json, against the PyTorch reference ---------------------------------------------


def _config_values(rng: random.Random, key: str, value):
    if isinstance(value, bool) or key in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
        return rng.choice([True, False, 0, 1, "true", None])
    if isinstance(value, int):
        return rng.choice([value * 2, value // 2, 0, -1, 1, float(value), value + 0.5, str(value), None, True,
                           2**40, value + 1])
    if isinstance(value, float):
        return rng.choice([0.0, -value, math.nan, math.inf, 1e-30, 1e30, str(value), None, value * 10, value / 10])
    if key == "hidden_act":
        return rng.choice(["silu", "gelu", "relu", "tanh", "swish", None, 5])
    if key == "model_type":
        return rng.choice(["llama", "mistral", "qwen2", "gpt2", "llada", None, 5])
    return rng.choice([None, [], {}, "x", 3])


EXTRA_KEYS = {"sliding_window": 4, "head_dim": 16, "attention_bias": False, "mlp_bias": False,
              "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "partial_rotary_factor": 1.0}


def _reference(folder: pathlib.Path, base: dict) -> np.ndarray:
    """The PyTorch logits of the mutated folder; an AssertionError when transformers cannot load or
    run it. Sizes written as integral floats (which jaxinterp documents as the same size) are
    handed to transformers as integers, since it does not coerce them."""
    import torch
    import transformers

    config = json.loads((folder / "config.json").read_text())
    sizes = {k: int(v) for k, v in config.items()
             if isinstance(base.get(k, EXTRA_KEYS.get(k)), int) and isinstance(v, float) and v.is_integer()}
    (folder / "config.json").write_text(json.dumps({**config, **sizes}))
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                                         dtype=torch.float32, output_loading_info=True)
        with torch.no_grad():
            logits = model.eval()(input_ids=torch.as_tensor(TOKENS).long()).logits.numpy()
    except Exception as e:  # noqa: BLE001 -- transformers refusing is an answer of the oracle
        raise AssertionError(f"accepted a config the reference refuses ({type(e).__name__}: {str(e)[:200]})") from None
    unloaded = [k for k in ("missing_keys", "mismatched_keys") if info.get(k)]
    assert not unloaded, f"accepted a config the reference cannot fill from the weights ({info})"
    return logits


def soak_configs(tally: Tally, rng: random.Random, original, tmp_path: pathlib.Path) -> None:
    base = json.loads((original["folder"] / "config.json").read_text())
    for i in range(PROBES):
        folder = tmp_path / f"configs{i}"
        shutil.copytree(original["folder"], folder)
        config = dict(base)
        for key in rng.sample(sorted({*base, *EXTRA_KEYS} - {"architectures", "transformers_version", "dtype"}),
                              rng.randint(1, 3)):
            if rng.random() < 0.15:
                config.pop(key, None)
            else:
                start = base.get(key, EXTRA_KEYS.get(key))
                config[key] = ({**start, "factor": _config_values(rng, "factor", 2.0)}
                               if isinstance(start, dict) else _config_values(rng, key, start))
        (folder / "config.json").write_text(json.dumps(config))
        changed = {k: config.get(k, "<removed>") for k in sorted({*config, *base}) if config.get(k) != base.get(k)}

        def check(model) -> None:
            ours = np.asarray(model(TOKENS))
            assert np.isfinite(ours).all(), "non-finite logits"
            np.testing.assert_allclose(ours, _reference(folder, base), atol=2e-4, rtol=2e-4)

        tally.probe(f"configs {changed}", lambda: ji.load(str(folder), progress=False), valid=None, check=check,
                    seconds=60)
        shutil.rmtree(folder)


# -- damaged converted directories -------------------------------------------------------------------------


def soak_damage(tally: Tally, rng: random.Random, original, tmp_path: pathlib.Path) -> None:
    for i in range(PROBES):
        folder = tmp_path / f"damage{i}"
        shutil.copytree(original["converted"], folder)
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names)
        victim = rng.choice(files)
        size = os.path.getsize(victim)
        action = rng.choice(["flip", "flip", "truncate", "append", "delete", "empty"])
        if action == "flip" and size:
            with open(victim, "r+b") as f:
                for _ in range(rng.randint(1, 4)):
                    f.seek(rng.randrange(size))
                    byte = f.read(1)
                    f.seek(-1, os.SEEK_CUR)
                    f.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
        elif action == "truncate":
            os.truncate(victim, rng.randrange(size + 1))
        elif action == "append":
            with open(victim, "ab") as f:
                f.write(rng.randbytes(rng.randint(1, 64)))
        elif action == "delete":
            os.remove(victim)
        else:
            os.truncate(victim, 0)
        tally.probe(f"damage {action} {os.path.relpath(victim, folder)}", lambda: ji.load(str(folder), progress=False),
                    valid=None, check=same_logits(original["logits"]), seconds=60)
        shutil.rmtree(folder)


# -- inputs outside the model --------------------------------------------------------------------------


LLAMA = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=8, max_position_embeddings=64)
GPT2 = GPT2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                  max_position_embeddings=8)


def _ids(rng: random.Random, shape, vocab: int) -> np.ndarray:
    ids = np.array([rng.randrange(vocab) for _ in range(math.prod(shape))], np.int64).reshape(shape)
    if rng.random() < 0.4:
        ids.flat[rng.randrange(ids.size)] = rng.choice([-1, -3, vocab, vocab + 2, 2**31 - 1])
    return ids


def _run_probe(rng: random.Random, model: ji.Model):
    config = model.config
    shape = (rng.randint(1, 2), rng.randint(1, config.max_position_embeddings + 3 if config is GPT2 else 10))
    ids = _ids(rng, shape, config.vocab_size)
    valid = bool(((ids >= 0) & (ids < config.vocab_size)).all()) and shape[1] <= config.max_position_embeddings
    inputs = ids if rng.random() < 0.5 else models.make_batch(jnp.asarray(ids, jnp.int32))
    if config is LLAMA and rng.random() < 0.3:  # left padding: pads may hold any id
        pads = rng.randrange(shape[1])
        mask = np.arange(shape[1])[None].repeat(shape[0], 0) >= pads
        ids[:, :pads] = rng.choice([0, -5, 999])
        valid = bool(((ids[mask] >= 0) & (ids[mask] < config.vocab_size)).all())
        inputs = models.make_batch(jnp.asarray(ids, jnp.int32), jnp.asarray(mask))

    def check(out) -> None:
        assert out.logits.shape == (*shape, config.vocab_size) and np.isfinite(out.logits).all()

    return f"run {type(inputs).__name__} {ids.tolist()}", lambda: model.run(inputs), valid, check


def _generate_probe(rng: random.Random, model: ji.Model):
    vocab = model.config.vocab_size
    kwargs = {"temperature": rng.choice([0.0, 0.7, -1.0, math.nan, 1.0]),
              "top_k": rng.choice([None, 0, 1, vocab, vocab + 1, -1]),
              "top_p": rng.choice([None, 0.0, 0.5, 1.0, 1.5, math.nan]),
              "stop": rng.choice([(), "", vocab, -1, 5, ["", 3], [3, vocab + 4]])}
    steps = rng.choice([-1, 0, 1, 3, "2", 2.0])
    stops = kwargs["stop"] if isinstance(kwargs["stop"], list) else [kwargs["stop"]] if kwargs["stop"] != () else []
    valid = (type(steps) is int and steps >= 1 and kwargs["temperature"] >= 0
             and (kwargs["top_k"] is None or 1 <= kwargs["top_k"] <= vocab)
             and (kwargs["top_p"] is None or 0 < kwargs["top_p"] <= 1)
             and all(isinstance(s, int) and 0 <= s < vocab for s in stops))
    prompt = models.make_batch(jnp.array([[1, 2, 3]], jnp.int32))

    def check(out) -> None:
        tokens = np.asarray(out.tokens)
        assert tokens.shape[1] <= steps and ((tokens >= 0) & (tokens < vocab)).all(), tokens

    return f"generate {steps} {kwargs}", lambda: model.generate(prompt, steps, **kwargs), valid, check


def _edit_probe(rng: random.Random, model: ji.Model):
    config = model.config
    layer = rng.choice([-1, 0, config.num_layers - 1, config.num_layers])
    head = rng.choice([-1, 0, config.num_heads - 1, config.num_heads, 0.5])
    number = rng.choice([0.0, 1.0, 2.5, math.nan, math.inf])
    width = rng.choice([config.hidden_size, config.hidden_size, config.hidden_size + 1])
    vector = np.full(width, number if rng.random() < 0.5 else 1.0, np.float32)
    kind = rng.choice(["ScaleHead", "SetHead", "AddToResidual"])
    edit = {"ScaleHead": lambda: ji.ScaleHead(layer=layer, head=head, scale=number),
            "SetHead": lambda: ji.SetHead(layer=layer, head=head, value=number),
            "AddToResidual": lambda: ji.AddToResidual(layer=layer, vector=jnp.asarray(vector))}[kind]()
    valid = 0 <= layer < config.num_layers and (
        np.isfinite(vector).all() and width == config.hidden_size if kind == "AddToResidual"
        else type(head) is int and 0 <= head < config.num_heads and math.isfinite(number))
    generating = rng.random() < 0.3
    call = ((lambda: model.generate(TOKENS[:, :3] % config.vocab_size, 2, edits=edit)) if generating
            else (lambda: model.run(TOKENS % config.vocab_size, edits=edit)))

    def check(out) -> None:
        values = np.asarray(out.tokens if generating else out.logits)
        assert np.isfinite(values).all()

    return f"{'generate' if generating else 'run'} {edit}", call, valid, check


def soak_inputs(tally: Tally, rng: random.Random, original, tmp_path: pathlib.Path) -> None:
    llama = ji.Model(LLAMA, models.init_params(LLAMA, jax.random.key(0)))
    gpt2 = ji.Model(GPT2, models.init_params(GPT2, jax.random.key(0)))
    for _ in range(PROBES):
        probe = rng.choice([_run_probe, _generate_probe, _edit_probe])
        label, call, valid, check = probe(rng, rng.choice([llama, gpt2]) if probe is _run_probe else llama)
        tally.probe(label, call, valid=valid, check=check, seconds=60)


# -- hostile text in every string a file can carry ----------------------------------------------------------


def soak_escapes(tally: Tally, rng: random.Random, original, tmp_path: pathlib.Path) -> None:
    for i in range(PROBES):
        text = hostile_text(rng)
        folder = tmp_path / f"escapes{i}"
        place = rng.choice(["config value", "config key", "rope type", "index entry", "tensor name", "manifest",
                            "gguf value", "gguf key"])
        target = folder
        if place.startswith("gguf"):
            folder.mkdir()
            pair = (("general.architecture", gguf_raw.STRING, text) if place == "gguf value" else
                    (text, gguf_raw.UINT32, 1))
            target = gguf_raw.write(folder / "model.gguf", raw_pairs=gguf_raw.pair(*pair),
                                    pairs=gguf_raw.LLAMA[1:] if place == "gguf value" else gguf_raw.LLAMA)
        elif place == "manifest":
            shutil.copytree(original["converted"], folder)
            manifest = json.loads((folder / "jaxinterp.json").read_text())
            manifest[rng.choice(["family", "dtype", "source"])] = text
            (folder / "jaxinterp.json").write_text(json.dumps(manifest))
        else:
            shutil.copytree(original["folder"], folder)
            config = json.loads((folder / "config.json").read_text())
            if place == "config value":
                config[rng.choice(["model_type", "hidden_act", "torch_dtype", "num_hidden_layers"])] = text
            elif place == "config key":
                config[text] = 1
            elif place == "rope type":
                config["rope_parameters"] = config["rope_scaling"] = {"rope_type": text}
            elif place == "index entry":
                (folder / "model.safetensors.index.json").write_text(json.dumps(
                    {"weight_map": {"model.embed_tokens.weight": text}}))
            else:
                _rename_first_tensor(folder / "model.safetensors", text)
            (folder / "config.json").write_text(json.dumps(config))
        tally.probe(f"escapes {place} {text!r}", lambda: ji.load(str(target), progress=False), valid=None,
                    check=same_logits(original["logits"]), seconds=30)
        shutil.rmtree(folder)


def _rename_first_tensor(path: pathlib.Path, name: str) -> None:
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    first = next(k for k in header if k != "__metadata__")
    header = {name if k == first else k: v for k, v in header.items()}
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + length:])


# -- destinations of convert ------------------------------------------------------------------------------


def soak_destinations(tally: Tally, rng: random.Random, original, tmp_path: pathlib.Path) -> None:
    for i in range(PROBES):
        parent = tmp_path / f"dest{i}"
        parent.mkdir()
        (parent / "file").write_text("x")
        kind = rng.choice(["fresh", "deep", "under_a_file", "existing_empty", "existing_full", "existing_file",
                           "dangling_link", "stale_partial", "odd_name", "read_only_parent"])
        dst = parent / {"deep": "a/b/c/out", "under_a_file": "file/out", "existing_file": "file",
                        "odd_name": "out put é 中"}.get(kind, "out")
        valid = kind in ("fresh", "deep", "stale_partial", "odd_name")
        if kind == "existing_empty":
            dst.mkdir()
        elif kind == "existing_full":
            dst.mkdir()
            (dst / "theirs").write_text("keep")
        elif kind == "dangling_link":
            os.symlink(parent / "nowhere", dst)
        elif kind == "stale_partial":
            (parent / ".out.partial-killed" / "params").mkdir(parents=True)
        elif kind == "read_only_parent":
            parent.chmod(0o500)
            valid = os.access(parent, os.W_OK)  # root writes anyway
        before = _listing(parent)

        def check(result) -> None:
            same_logits(original["logits"])(ji.load(result, progress=False))
            leftovers = [p for p in os.listdir(dst.parent) if ".partial-" in p]
            assert not leftovers, f"left behind {leftovers}"

        def call():
            try:
                return ji.convert(str(original["folder"]), str(dst), progress=False)
            finally:
                if not valid:
                    assert _listing(parent) == before, "a refused convert changed its destination's folder"

        tally.probe(f"destination {kind} {dst}", call, valid=valid, check=check, seconds=60)
        parent.chmod(0o700)
        shutil.rmtree(parent)


def _listing(folder: pathlib.Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder)
                  for n in dirs + files if not n.endswith(".convert.lock"))


# -- the command line --------------------------------------------------------------------------------------


def _options(parser) -> dict[str, list[str]]:
    """{subcommand: its option strings}, read from the CLI's own parser."""
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    return {name: [o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help", "--debug")]
            for name, sub in commands.items()}


def soak_cli(tally: Tally, rng: random.Random, original, tmp_path: pathlib.Path) -> None:
    options = {k: v for k, v in _options(cli._parser()).items() if k not in ("data", "experiment", "plan")}
    model = str(original["converted"])
    (tmp_path / "file").write_text("x")
    values = ["the cat", "-1", "0", "1e9", "nan", "", "x", "file", "file/out", "/proc/jaxinterp-none", "blocks.0.*",
              "embed", "scale_head", "layer=9", "head=1", "cat", "1", "3"]
    for _ in range(PROBES):
        command = rng.choice(sorted(options))
        argv = [command, *(["--model", model] if "--model" in options[command] else [])]
        for _ in range(rng.randint(0, 4)):
            argv += [rng.choice(options[command] + ["the cat"])] + ([rng.choice(values + [hostile_text(rng)])]
                                                                  if rng.random() < 0.8 else [])
        if "--max-new-tokens" in options[command] and "--max-new-tokens" not in argv:
            argv += ["--max-new-tokens", "2"]

        def call():
            err, out = io.StringIO(), io.StringIO()
            previous = os.getcwd()
            os.chdir(tmp_path)
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                    try:
                        code = cli.main(argv)
                    except SystemExit as e:  # argparse's usage errors exit
                        code = e.code
            finally:
                os.chdir(previous)
            err = err.getvalue().strip()
            if code not in (0, None) and err.startswith("jaxinterp") and "Traceback" not in err:
                raise ji.JaxinterpError(err)  # a refusal: the tally checks it is one printable line
            return code, err

        def check(result) -> None:
            code, err = result
            assert code in (0, None), f"exit {code} with {err!r}"

        tally.probe(f"cli {argv}", call, valid=None, check=check, seconds=120)


# -- chat templates ---------------------------------------------------------------------------------------


def soak_templates(tally: Tally, rng: random.Random, original, tmp_path: pathlib.Path) -> None:
    pieces = ["{% for i in range(N) %}", "{% endfor %}", "{{ 'x' * N }}", "{{ messages[0]['content'] | upper }}",
              "{% if i is defined %}", "{% endif %}", "{{ ''.__class__ }}", "{{ N ** N }}", "{{ range(N) | list }}",
              "{{ raise_exception('T') }}", "{{ messages.append(1) }}", "{% set x = 'y' * N %}{{ x | length }}",
              "{{ messages | tojson }}", "{{ cycler.__init__.__globals__ }}", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}"]
    tokenizer = word_tokenizer(["hello", "world"])
    for _ in range(PROBES):
        template = "".join(rng.choice(pieces).replace("N", str(rng.choice([2, 1000, 100000, 10**9])))
                           .replace("T", hostile_text(rng).replace("'", "")) for _ in range(rng.randint(1, 8)))
        tokenizer.chat_template = template

        def check(text) -> None:
            assert isinstance(text, str) and len(text) <= chat_template.OUTPUT_LIMIT + 1000, len(text)

        tally.probe(f"template {template[:200]!r}", lambda: chat_template.render_chat(
            tokenizer, [{"role": "user", "content": "hello"}], add_generation_prompt=True, source="soak"),
            valid=None, check=check, seconds=20)


@pytest.mark.parametrize("kind", CLASSES)
def test_random_hostile_probes_end_cleanly(kind, original, tmp_path, monkeypatch):
    monkeypatch.setattr(chat_template, "TIME_LIMIT", 0.5)  # the template bound, shortened to keep probes fast
    tally = Tally(kind, SEED)
    globals()[f"soak_{kind}"](tally, random.Random(f"{SEED}-{kind}"), original, tmp_path)
    if SOAK:
        RESULTS.mkdir(parents=True, exist_ok=True)
        record = {**tally.counts(), "date": datetime.date.today().isoformat(), "jax": jax.__version__,
                  "failed": tally.failures[:20]}
        (RESULTS / f"{kind}.json").write_text(json.dumps(record, indent=1) + "\n")
    assert tally.probes == PROBES
    assert not tally.failures, f"seed {SEED} (replay: JAXINTERP_SOAK_SEED={SEED}):\n" + "\n".join(tally.failures)


def test_the_tally_tells_each_failure_apart():
    tally = Tally("self-test", 0)
    tally.probe("clean", lambda: (_ for _ in ()).throw(ji.ArgumentError("bad x")), valid=False)
    tally.probe("raw", lambda: {}["k"], valid=None)
    tally.probe("two lines", lambda: (_ for _ in ()).throw(ji.ArgumentError("a\nb")), valid=None)
    tally.probe("refused valid", lambda: (_ for _ in ()).throw(ji.ArgumentError("no")), valid=True)
    tally.probe("silent", lambda: 1, valid=False)
    tally.probe("wrong", lambda: 1, valid=True, check=lambda r: np.testing.assert_equal(r, 2))
    tally.probe("hang", lambda: time.sleep(5), valid=None, seconds=0.2)
    tally.probe("ok", lambda: 2, valid=True, check=lambda r: np.testing.assert_equal(r, 2))
    assert (tally.refused, tally.accepted, tally.probes) == (1, 1, 8)
    assert [f.split(":")[0] for f in tally.failures] == ["raw", "two lines", "refused valid", "silent", "wrong", "hang"]


def test_security_md_quotes_every_soak_result():
    """The soak counts in SECURITY.md come from the results files, row for row."""
    text = (RESULTS.parent.parent / "SECURITY.md").read_text()
    recorded = sorted(RESULTS.glob("*.json"))
    assert {p.stem for p in recorded} == set(CLASSES), "run the soak: JAXINTERP_SOAK=1 pytest tests/test_hostile_soak.py"
    for path in recorded:
        r = json.loads(path.read_text())
        row = f"| {path.stem} | {r['probes']} | {r['refused']} | {r['accepted']} | {r['failures']} | {r['date']} |"
        assert row in text, f"SECURITY.md lacks the row {row}"
        assert f"seed {r['seed']}," in text, f"SECURITY.md does not quote the seed {r['seed']} of {path.name}"
