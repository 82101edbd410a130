"""POSTing a signed completion callback to a CRM.

The URL was checked when it was given; its host is checked again here, resolved, because a name
can point anywhere: every address it resolves to must be allowed, and the call goes to the
address that was checked (with the name as Host and TLS server name), so a second lookup cannot
swap in another one.
"""

from __future__ import annotations

import socket

import httpx

from sluice.adapters.deadlines import within
from sluice.adapters.outside import ProviderError, retry_after_seconds, transport_error
from sluice.domain.callbacks import address_refusal, callback_url_refusal


class RefusedCallback(Exception):
    """The callback URL may not be called: retrying cannot change that."""


class CallbackSender:
    def __init__(self, http: httpx.Client, *, timeout: float, allow_loopback: bool) -> None:
        self._http = http
        self._timeout = timeout
        self._allow_loopback = allow_loopback

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        target, extensions = self._pinned(url)
        host = httpx.URL(url).netloc.decode("ascii")
        try:
            with within(self._timeout):  # the whole call's deadline, not each read's
                response = self._http.post(
                    target, content=body, headers={**headers, "host": host},
                    timeout=self._timeout, extensions=extensions,
                )  # fmt: skip
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

    def _pinned(self, url: str) -> tuple[httpx.URL, dict[str, str]]:
        """The URL with its host replaced by a checked address of it; RefusedCallback if the
        URL or any address of its host is not allowed."""
        refused = callback_url_refusal(url, allow_loopback=self._allow_loopback)
        if refused:
            raise RefusedCallback(f"callback URL refused: {refused}")
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            found = socket.getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            # A name that does not resolve may resolve later (DNS being changed): transient.
            raise ProviderError(
                f"callback host {parsed.host} not found: {exc}", permanent=False
            ) from None
        addresses = [str(info[4][0]) for info in found]
        for address in addresses:
            refused = address_refusal(address, allow_loopback=self._allow_loopback)
            if refused:
                raise RefusedCallback(f"callback host {parsed.host} resolves to {refused}")
        return parsed.copy_with(host=addresses[0]), {"sni_hostname": parsed.host}
