"""The publisher on the Pub/Sub emulator: a function publishes only to the topics its `publishes`
lists, as its service account may in the cloud, so a missing entry fails locally first."""

from __future__ import annotations

import json

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from sluice.adapters.publisher import Publisher


def test_a_topic_missing_from_publishes_is_refused_before_anything_is_sent(project):
    client, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for topic in ("work-items", "whatsapp-events"):
        client.create_topic(name=client.topic_path(project, topic))
    tap = subscriber.subscription_path(project, "tap")
    subscriber.create_subscription(name=tap, topic=client.topic_path(project, "whatsapp-events"))
    publisher = Publisher(client, project, timeout=10, allowed=frozenset({"work-items"}))

    assert len(publisher.publish("work-items", [{"n": 1}])) == 1
    with pytest.raises(PermissionError, match="publishes"):
        publisher.publish("whatsapp-events", [{"n": 2}])
    # A marker from a publisher that may: it alone arrives.
    Publisher(client, project, timeout=10).publish("whatsapp-events", [{"n": 3}])
    pulled = subscriber.pull(subscription=tap, max_messages=10, timeout=10).received_messages
    assert [json.loads(m.message.data) for m in pulled] == [{"n": 3}]
    subscriber.close()


def test_a_publish_of_thousands_stores_every_message_once_under_the_ids_it_returns(project):
    # 2,500 messages are three Publish requests (at most 1,000 each), sent at once.
    client, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    client.create_topic(name=client.topic_path(project, "work-items"))
    tap = subscriber.subscription_path(project, "tap")
    subscriber.create_subscription(name=tap, topic=client.topic_path(project, "work-items"))
    sent = [{"item_id": f"i{n:04d}"} for n in range(2500)]

    ids = Publisher(client, project, timeout=10).publish("work-items", sent)

    assert len(set(ids)) == len(sent)
    got: dict[str, dict] = {}
    while len(got) < len(sent):
        pulled = subscriber.pull(subscription=tap, max_messages=1000, timeout=10)
        got.update({m.message.message_id: json.loads(m.message.data)
                    for m in pulled.received_messages})  # fmt: skip
        subscriber.acknowledge(
            subscription=tap, ack_ids=[m.ack_id for m in pulled.received_messages]
        )
    assert [got[i] for i in ids] == sent
    subscriber.close()
