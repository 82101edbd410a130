"""What a kind's step sends, declared in topology.yaml as templates, rendered per item.

A template sees the item's `input`, the batch's `params` and, as `steps.<name>`, the outputs of
the steps its step comes after (a chat step's output: `content`, `model`, `usage`, ...). It is
rendered by Jinja2's sandbox: a template can read those values and use Jinja's filters, but not
reach Python's internals (`{{ input.__class__ }}` is refused), so a topology, or a CRM's input,
can never make a function run code. Templates are compiled when the
topology loads: a syntax error fails the start, not the first item.

One filter is added: `text`, a value as the model should read it (a string as it is, anything
else as JSON), which is how an item's input has always been sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment


class TemplateRefused(ValueError):
    """A template that cannot be rendered for this item (it reached for something the sandbox
    forbids, or failed on the item's values): the item fails, with this as its reason."""


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


def check(source: str) -> str | None:
    """What is wrong with a template's syntax, if anything (for the topology's validation)."""
    try:
        _environment().parse(source)
    except TemplateError as error:
        return str(error)
    return None


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str  # a template


class ChatTemplate:
    """A chat step's messages, compiled once per process."""

    def __init__(self, messages: Sequence[ChatMessage]) -> None:
        env = _environment()
        self._messages = [(m.role, env.from_string(m.content)) for m in messages]

    def render(
        self, item_input: Any, params: dict[str, Any], steps: Mapping[str, Any] | None = None
    ) -> list[dict[str, str]]:
        """The messages for one item, given the outputs of the steps it needs (`steps`); a
        message whose content renders blank is left out (an optional system prompt the batch
        does not give)."""
        values = {"input": item_input, "params": params, "steps": dict(steps or {})}
        rendered = []
        for role, template in self._messages:
            try:
                content = template.render(values)
            except TemplateError as error:
                raise TemplateRefused(f"the kind's {role} template: {error}") from None
            if content.strip():
                rendered.append({"role": role, "content": content})
        if not rendered:
            raise TemplateRefused("the kind's templates rendered no message for this item")
        return rendered
