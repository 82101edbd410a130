"""An OpenAI-compatible chat completions API: the one adapter for AI providers.

A real deployment points `SLUICE_AI_PROVIDER_URL` at a real provider; local runs and tests point it
at the local provider server, so this code is what runs in both.
"""

from __future__ import annotations

from typing import Any

import httpx

from sluice.adapters.deadlines import within
from sluice.adapters.outside import ProviderError, retry_after_seconds, transport_error
from sluice.domain.templates import as_text


class AIProvider:
    def __init__(
        self, http: httpx.Client, *, base_url: str, api_key: str, model: str, timeout: float
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/v1/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._timeout = timeout

    def complete(self, item_input: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """`item_input` as the user's message, `params.instructions` as the system's."""
        return self.chat(messages_for(item_input, params or {}), params)

    def chat(
        self, messages: list[dict[str, str]], params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One chat completion of `messages`, on `params.model` or the deployment's model."""
        body = {"model": (params or {}).get("model", self._model), "messages": messages}
        try:
            # The provider's timeout is the whole call's: the limiter and the lease count on it.
            with within(self._timeout):
                response = self._http.post(
                    self._url, json=body, headers=self._headers, timeout=self._timeout
                )
        except httpx.TransportError as exc:
            raise transport_error("provider", exc, deadline=self._timeout) from None
        if response.status_code == 200:
            return result_of(response.json())
        raise error_of(response)


def messages_for(item_input: Any, params: dict[str, Any]) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": as_text(item_input)}]
    if isinstance(params.get("instructions"), str):
        messages.insert(0, {"role": "system", "content": params["instructions"]})
    return messages


def result_of(payload: dict[str, Any]) -> dict[str, Any]:
    choice = (payload.get("choices") or [{}])[0]
    return {
        "content": (choice.get("message") or {}).get("content"),
        "finish_reason": choice.get("finish_reason"),
        "model": payload.get("model"),
        "provider_id": payload.get("id"),
        "usage": payload.get("usage"),
    }


def error_of(response: httpx.Response) -> ProviderError:
    status = response.status_code
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    reason = f"provider answered {status}: {message}"
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    # 408, 409 (conflict), 429 and every 5xx can pass with time; other 4xx cannot.
    transient = status in (408, 409, 429) or status >= 500
    return ProviderError(
        reason, permanent=not transient, retry_after=retry_after, rate_limited=status == 429
    )
