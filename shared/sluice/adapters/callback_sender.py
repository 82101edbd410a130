"""POSTing a signed completion callback to a CRM."""

from __future__ import annotations

import httpx

from sluice.adapters.deadlines import within
from sluice.adapters.outside import ProviderError, retry_after_seconds, transport_error


class CallbackSender:
    def __init__(self, http: httpx.Client, *, timeout: float) -> None:
        self._http = http
        self._timeout = timeout

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            with within(self._timeout):  # the whole call's deadline, not each read's
                response = self._http.post(
                    url, content=body, headers=headers, timeout=self._timeout
                )
        except httpx.TransportError as exc:
            raise transport_error("callback endpoint", exc, deadline=self._timeout) from None
        if response.is_success:
            return
        # Every failure is retried: the CRM may be down or deploying; it asked for the callback.
        raise ProviderError(
            f"callback endpoint answered {response.status_code}",
            permanent=False,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
            rate_limited=response.status_code == 429,
        )
