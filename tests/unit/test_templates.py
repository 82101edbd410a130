"""A kind's messages: rendered from its templates per item, in Jinja2's sandbox."""

from __future__ import annotations

import pytest

from sluice.domain.templates import ChatMessage, ChatTemplate, TemplateRefused, check
from sluice.topology import load_topology


def chat_kind() -> ChatTemplate:
    return load_topology().kinds["chat"].plan().steps[0].template


def test_the_chat_kind_sends_the_input_and_the_instructions_as_it_always_has():
    kind = chat_kind()
    assert kind.render("a room", {}) == [{"role": "user", "content": "a room"}]
    assert kind.render({"url": "https://x/1.jpg", "n": [1, 2]}, {"instructions": "Be brief."}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": '{"url": "https://x/1.jpg", "n": [1, 2]}'},
    ]
    # Instructions that are not text are not a system prompt (as before templates).
    assert kind.render("x", {"instructions": {"a": 1}}) == [{"role": "user", "content": "x"}]


def test_a_template_reads_the_input_and_params_by_name():
    kind = ChatTemplate([ChatMessage("user", "Stage {{ input.room }} in {{ params.style }} style")])
    rendered = kind.render({"room": "the kitchen"}, {"style": "Scandinavian"})
    assert rendered == [{"role": "user", "content": "Stage the kitchen in Scandinavian style"}]


@pytest.mark.parametrize(
    "source",
    ["{{ input.__class__.__mro__ }}", "{{ params.update.__self__ }}", "{{ ''.__class__ }}"],
)
def test_the_sandbox_refuses_what_reaches_for_python(source):
    with pytest.raises(TemplateRefused, match="unsafe"):
        ChatTemplate([ChatMessage("user", source)]).render({"a": 1}, {})


def test_a_template_failing_on_an_item_or_rendering_nothing_is_refused_with_a_reason():
    with pytest.raises(TemplateRefused, match="has no attribute 'x'"):
        ChatTemplate([ChatMessage("user", "{{ params.x.y }}")]).render("i", {})
    with pytest.raises(TemplateRefused, match="no message"):
        ChatTemplate([ChatMessage("user", "{{ params.missing }}")]).render("i", {})


def test_a_template_with_bad_syntax_is_found_before_it_is_used():
    assert check("{{ input | text }}") is None
    assert "unexpected" in (check("{{ input") or "")
