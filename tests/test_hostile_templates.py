"""Hostile chat templates: rendered in Jinja's sandbox with a time and an output bound.

A template that loops forever, builds gigabytes, reaches for Python internals, raises, or
does not parse is one `CheckpointError` naming the template's source, in bounded time
(`converters/chat_template.py`); ordinary templates render exactly as transformers does.
"""

from __future__ import annotations

import jax
import pytest

import jaxinterp as ji
from jaxinterp import models
from jaxinterp.converters import chat_template
from jaxinterp.converters.chat_template import render_chat
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.models.llama import LlamaConfig
from tests.hostile import one_clean_line, within

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
def tokenizer(monkeypatch):
    monkeypatch.setattr(chat_template, "TIME_LIMIT", 0.5)  # the bound under test, shortened to keep the suite fast
    return word_tokenizer(["hello", "world", "x"])


def _refused(tokenizer, template: str, *needles: str) -> None:
    tokenizer.chat_template = template
    with within(20), pytest.raises(ji.CheckpointError) as error:
        render_chat(tokenizer, USER, add_generation_prompt=True, source="model.gguf")
    message = str(error.value)
    one_clean_line(message)
    for needle in ("model.gguf: chat template", *needles):
        assert needle in message, message


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}{% endfor %}{% endfor %}"
    "{% endfor %}",
    "{% for m in messages * 100000 %}{% for i in range(100000) %}{% if i < 0 %}x{% endif %}{% endfor %}{% endfor %}",
])
def test_endless_loops_hit_the_time_bound(tokenizer, template):
    _refused(tokenizer, template, "still rendering after")


@pytest.mark.parametrize("template, needle", [
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output longer than"),
    ("{{ 'x' * 10000000000 }}", "a repetition of"),
    ("{{ [1] * 10000000000 }}", "a repetition of"),
    ("{{ 10 ** 100000000 }}", "an exponent of"),
])
def test_outputs_that_would_fill_memory_hit_the_size_bound(tokenizer, template, needle):
    _refused(tokenizer, template, needle)


@pytest.mark.parametrize("template, needle", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "refused by Jinja's sandbox"),
    ("{{ messages.append(1) }}", "refused by Jinja's sandbox"),
    ("{{ raise_exception('no \x1b[31mred\x1b[0m here') }}", "failed to render (TemplateError: no \\x1b[31mred"),
    ("{% for %}", "failed to render (TemplateSyntaxError"),
    ("{{ messages[5]['content'] }}", "failed to render"),
])
def test_sandbox_refusals_and_template_errors_are_one_line(tokenizer, template, needle):
    _refused(tokenizer, template, needle)


def test_ordinary_templates_render_as_transformers_renders_them(tokenizer):
    ours = render_chat(tokenizer, USER, add_generation_prompt=True)
    assert ours == tokenizer.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)


def test_encode_with_chat_goes_through_the_bounded_renderer(tokenizer):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=8)
    model = ji.Model(config, models.init_params(config, jax.random.key(0)), tokenizer, source="tiny.gguf")
    assert model.encode("hello", chat=True).tokens.shape[0] == 1
    tokenizer.chat_template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with within(20), pytest.raises(ji.CheckpointError, match="tiny.gguf: chat template: refused: still rendering"):
        model.encode("hello", chat=True)

