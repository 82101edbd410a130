"""A provider a kind's steps call, over the shared HTTP client: its three kinds of call.

- `chat`: an OpenAI-compatible chat completion (text, or content parts with images);
- `request`: a JSON request to a path of its endpoint, the JSON answer the output (an `http`
  step, and a remote job's start);
- `poll`: a remote job's status.

A real deployment points each provider's endpoint setting (`SLUICE_AI_PROVIDER_URL`, ...) at the
real service; local runs and tests point it at the local servers, so this code runs in both.
"""

from __future__ import annotations

from typing import Any

import httpx

from sluice.adapters.deadlines import within
from sluice.adapters.outside import ProviderError, retry_after_seconds, transport_error


class ProviderAPI:
    def __init__(
        self, http: httpx.Client, *, base_url: str, api_key: str, model: str, timeout: float
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._url = self._base + "/v1/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._timeout = timeout

    def chat(
        self, messages: list[dict[str, Any]], params: dict[str, Any] | None = None,
        *, model: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """One chat completion of `messages`, on `model` (a step's), `params.model` or the
        deployment's model."""
        body = {"model": model or (params or {}).get("model", self._model), "messages": messages}
        return result_of(self._send("POST", self._url, body))

    def request(self, method: str, path: str, body: Any) -> dict[str, Any]:
        """A JSON request to `path`; its JSON answer (an object)."""
        return self._send(method, self._base + path, body)

    def poll(self, path: str) -> dict[str, Any]:
        """`GET path`: a remote job's status."""
        return self._send("GET", self._base + path, None)

    def _send(self, method: str, url: str, body: Any) -> dict[str, Any]:
        try:
            # The provider's timeout is the whole call's: the limiter and the lease count on it.
            with within(self._timeout):
                response = self._http.request(
                    method, url, json=body, headers=self._headers, timeout=self._timeout
                )
        except httpx.TransportError as exc:
            raise transport_error("provider", exc, deadline=self._timeout) from None
        if response.status_code not in (200, 201, 202):
            raise error_of(response)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            # A success that is no JSON object is the provider's fault and may not last.
            raise ProviderError(f"provider answered {response.status_code} without a JSON object",
                                permanent=False)  # fmt: skip
        return answer


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
        error = response.json()["error"]
        # OpenAI's {"error": {"message"}}, or the {"error": "..."} of many other APIs.
        message = error["message"] if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    reason = f"provider answered {status}: {message}"
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    # 408, 409 (conflict), 429 and every 5xx can pass with time; other 4xx cannot.
    transient = status in (408, 409, 429) or status >= 500
    return ProviderError(
        reason, permanent=not transient, retry_after=retry_after, rate_limited=status == 429
    )
