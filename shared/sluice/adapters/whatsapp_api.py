"""The WhatsApp Cloud API's messages endpoint (Meta's Graph API): sending a reply.

Locally `SLUICE_WHATSAPP_GRAPH_URL` points at the local Graph server; in the cloud it is Meta's.
"""

from __future__ import annotations

import httpx

from sluice.adapters.deadlines import within
from sluice.adapters.outside import ProviderError, retry_after_seconds, transport_error

# Graph error codes that pass with time: rate limits (throughput, per-user pair, spam) and
# Meta's own temporary failures.
RATE_LIMIT_CODES = frozenset({4, 80007, 130429, 131056})
TRANSIENT_CODES = frozenset({4, 80007, 130429, 131016, 131048, 131056, 131000, 133004, 2})


class WhatsAppAPI:
    def __init__(
        self, http: httpx.Client, *, base_url: str, version: str, token: str, timeout: float
    ) -> None:
        self._http = http
        self._base = f"{base_url.rstrip('/')}/{version}"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout

    def send_text(self, phone_number_id: str, to: str, text: str, *, reply_to: str = "") -> str:
        """Send a text message; return its `wamid`."""
        body: dict[str, object] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"body": text[:4096], "preview_url": False},
        }
        if reply_to:
            body["context"] = {"message_id": reply_to}
        try:
            with within(self._timeout):  # the whole call's deadline, not each read's
                response = self._http.post(
                    f"{self._base}/{phone_number_id}/messages",
                    json=body,
                    headers=self._headers,
                    timeout=self._timeout,
                )
        except httpx.TransportError as exc:
            raise transport_error("WhatsApp Cloud API", exc, deadline=self._timeout) from None
        if response.status_code == 200:
            return str(response.json()["messages"][0]["id"])
        raise graph_error(response)


def graph_error(response: httpx.Response) -> ProviderError:
    try:
        error = response.json()["error"]
        code, message = int(error.get("code", 0)), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = 0, response.text[:200]
    transient = (
        code in TRANSIENT_CODES or response.status_code in (429,) or (response.status_code >= 500)
    )
    return ProviderError(
        f"WhatsApp Cloud API answered {response.status_code} (code {code}): {message}",
        permanent=not transient,
        retry_after=retry_after_seconds(response.headers.get("retry-after")),
        rate_limited=code in RATE_LIMIT_CODES or response.status_code == 429,
    )
