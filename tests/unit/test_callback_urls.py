"""A callback URL is https to a public address; plain http and loopback only in the local cloud."""

from __future__ import annotations

import socket

import httpx
import pytest

from sluice.adapters.callback_sender import CallbackSender, RefusedCallback
from sluice.domain.batches import parse_batch
from sluice.domain.callbacks import address_refusal, callback_url_refusal
from sluice.domain.errors import Invalid, Unauthenticated

KINDS = {"kinds": ["chat"], "default_kind": "chat"}

REFUSED_EVERYWHERE = [
    "http://crm.example/cb",  # plain http to the internet
    "ftp://crm.example/cb",
    "https://10.1.2.3/cb",
    "https://172.16.0.1/cb",
    "https://192.168.1.1/cb",
    "https://100.64.0.1/cb",  # carrier-grade NAT
    "https://169.254.169.254/computeMetadata/v1/",  # the metadata server
    "https://[fe80::1]/cb",
    "https://[fd00:ec2::254]/cb",
    "https://[::ffff:10.0.0.1]/cb",
    "https://0.0.0.0/cb",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://metadata/computeMetadata/v1/",
    "https://host.internal/cb",
    "http://10.0.0.1/cb",
]
LOOPBACK = ["https://127.0.0.1/cb", "http://127.0.0.1:8080/cb", "http://[::1]:8080/cb",
            "http://localhost:8080/cb", "https://127.9.9.9/cb"]  # fmt: skip
ALLOWED = ["https://crm.example/cb", "https://8.8.8.8/cb", "https://[2001:4860::8888]/cb"]


@pytest.mark.parametrize("url", REFUSED_EVERYWHERE)
def test_private_metadata_and_plain_http_urls_are_refused_everywhere(url):
    assert callback_url_refusal(url, allow_loopback=False)
    assert callback_url_refusal(url, allow_loopback=True)


@pytest.mark.parametrize("url", LOOPBACK)
def test_loopback_only_in_the_local_cloud(url):
    assert callback_url_refusal(url, allow_loopback=False)
    assert callback_url_refusal(url, allow_loopback=True) is None


@pytest.mark.parametrize("url", ALLOWED)
def test_https_to_public_hosts_is_allowed(url):
    assert callback_url_refusal(url, allow_loopback=False) is None


def test_a_batch_with_a_refused_callback_url_is_a_400_naming_it():
    payload = {"kind": "chat", "items": [{"input": 1}], "callback_url": "https://10.0.0.1/cb"}
    with pytest.raises((Invalid, Unauthenticated)) as caught:
        parse_batch(payload, **KINDS, max_batch_items=5, max_item_input_bytes=100)
    assert [e.field for e in caught.value.errors] == ["callback_url"]
    payload["callback_url"] = "http://127.0.0.1:9/cb"
    with pytest.raises((Invalid, Unauthenticated)):
        parse_batch(payload, **KINDS, max_batch_items=5, max_item_input_bytes=100)
    parse_batch(payload, **KINDS, max_batch_items=5, max_item_input_bytes=100,
                allow_loopback_callbacks=True)  # fmt: skip


def test_addresses():
    assert address_refusal("93.184.216.34", allow_loopback=False) is None
    assert address_refusal("127.0.0.1", allow_loopback=False)
    assert address_refusal("127.0.0.1", allow_loopback=True) is None
    assert address_refusal("::ffff:169.254.169.254", allow_loopback=True)


def test_a_name_is_checked_again_once_resolved():
    # This machine's own name resolves to one of its addresses (loopback or private), never
    # public: the URL passes the check at submission, and is refused at send time.
    name = socket.gethostname()
    url = f"https://{name}/cb"
    assert callback_url_refusal(url, allow_loopback=False) is None
    with httpx.Client() as http:
        sender = CallbackSender(http, timeout=1, allow_loopback=False)
        with pytest.raises(RefusedCallback, match="resolves to"):
            sender.post(url, b"{}", {})
