"""API keys and page tokens."""

import pytest

from sluice.domain.errors import Invalid, Unauthenticated
from sluice.domain.paging import decode_token, encode_token, page_size
from sluice.domain.tenants import bearer_key, hash_api_key, new_api_key, tenant_id
from sluice.problems import from_refusal


def test_keys_are_random_and_stored_only_as_a_digest():
    a, b = new_api_key(), new_api_key()
    assert a != b and a.startswith("sk_")
    assert hash_api_key(a) == hash_api_key(a) != hash_api_key(b)
    assert a not in hash_api_key(a)


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer not-ours"])
def test_a_bad_authorization_header_is_a_401(header):
    with pytest.raises((Invalid, Unauthenticated)) as caught:
        bearer_key(header)
    assert from_refusal(caught.value).status == 401


def test_a_bearer_key_is_read():
    assert bearer_key("Bearer sk_abc") == "sk_abc"


def test_tenant_ids_are_slugs():
    assert tenant_id("Acme CRM, Inc.") == "acme-crm-inc"
    with pytest.raises(ValueError):
        tenant_id("!!!")


def test_page_tokens_round_trip_and_bad_ones_are_a_400():
    assert decode_token(encode_token("item-42")) == "item-42"
    assert decode_token(None) is None
    with pytest.raises((Invalid, Unauthenticated)):
        decode_token("%%%")


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "501"])
def test_page_size_outside_the_range_is_a_400(raw):
    with pytest.raises((Invalid, Unauthenticated)):
        page_size(raw, default=50, maximum=500)
    assert page_size(None, default=50, maximum=500) == 50
