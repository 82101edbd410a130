"""What a kind's step sends, declared in topology.yaml as templates, rendered per item.

A template sees the item's `input`, the batch's `params` and, as `steps.<name>`, the outputs of
the steps its step comes after (a chat step's output: `content`, `model`, `usage`, ...). It is
rendered by Jinja2's sandbox: a template can read those values and use Jinja's filters, but not
reach Python's internals (`{{ input.__class__ }}` is refused), so a topology, or a CRM's input,
can never make a function run code. Templates are compiled when the
topology loads: a syntax error fails the start, not the first item.

One filter is added: `text`, a value as the model should read it (a string as it is, anything
else as JSON), which is how an item's input has always been sent.

What a step sends is JSON (a chat message's content parts, an `http` step's body): every string
in it is a template, rendered to text, and the rest is sent as declared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment


class TemplateRefused(ValueError):
    """A template that cannot be rendered for this item (it reached for something the sandbox
    forbids, or failed on the item's values): the item fails, with this as its reason. `step`:
    the step of its kind whose template it is, once known."""

    def __init__(self, reason: str, step: str | None = None) -> None:
        super().__init__(reason)
        self.step = step


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class _Sandbox(SandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Jinja's sandbox answers an unsafe attribute with an undefined value, which renders
        # as nothing: a template that tries is refused instead, so its author finds out.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


@cache
def _environment() -> SandboxedEnvironment:
    # Not HTML: nothing is escaped. Undefined values (a param the batch does not give) are empty.
    env = _Sandbox(autoescape=False, keep_trailing_newline=False)
    env.filters["text"] = as_text
    return env


def check(value: Any) -> str | None:
    """What is wrong with the syntax of a template, or of any template in a JSON value, if
    anything (for the topology's validation)."""
    try:
        _compile(value)
    except TemplateError as error:
        return str(error)
    return None


def _compile(value: Any) -> Any:
    """`value` with each string compiled (a JSON value: dicts, lists, strings, the rest)."""
    if isinstance(value, str):
        return _environment().from_string(value)
    if isinstance(value, dict):
        return {k: _compile(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compile(v) for v in value]
    return value


def _render(compiled: Any, values: dict[str, Any], what: str) -> Any:
    if isinstance(compiled, Template):
        try:
            return compiled.render(values)
        except TemplateError as error:
            raise TemplateRefused(f"the kind's {what} template: {error}") from None
    if isinstance(compiled, dict):
        return {k: _render(v, values, what) for k, v in compiled.items()}
    if isinstance(compiled, list):
        return [_render(v, values, what) for v in compiled]
    return compiled


def _values(item_input: Any, params: dict[str, Any], steps: Mapping[str, Any] | None) -> dict:
    return {"input": item_input, "params": params, "steps": dict(steps or {})}


def _blank(value: Any) -> bool:
    """A rendered content part with nothing in it: no text, or an image with no URL."""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, dict):
        return all(_blank(v) for k, v in value.items() if k != "type")
    return False


@dataclass(frozen=True)
class ChatMessage:
    role: str
    # A template, or content parts (`{type: text, text}`, `{type: image_url, image_url: {url}}`)
    # whose strings are templates: how vision models are sent images.
    content: str | list[dict[str, Any]]


class ChatTemplate:
    """A chat step's messages, compiled once per process."""

    def __init__(self, messages: Sequence[ChatMessage]) -> None:
        self._messages = [(m.role, _compile(m.content)) for m in messages]

    def render(
        self, item_input: Any, params: dict[str, Any], steps: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The messages for one item, given the outputs of the steps it needs (`steps`); a
        message or content part that renders blank is left out (an optional system prompt the
        batch does not give, an image the item has not)."""
        values = _values(item_input, params, steps)
        rendered: list[dict[str, Any]] = []
        for role, compiled in self._messages:
            content = _render(compiled, values, role)
            if isinstance(content, list):
                content = [part for part in content if not _blank(part)]
            if content and not _blank(content):
                rendered.append({"role": role, "content": content})
        if not rendered:
            raise TemplateRefused("the kind's templates rendered no message for this item")
        return rendered


class RequestTemplate:
    """A JSON request an `http` or remote-job step sends: each string in it a template."""

    def __init__(self, body: Any) -> None:
        self._body = _compile(body)

    def render(
        self, item_input: Any, params: dict[str, Any], steps: Mapping[str, Any] | None = None
    ) -> Any:
        return _render(self._body, _values(item_input, params, steps), "request")
