"""The processor's dispatch: every subscription pushed to it has a handler, and every handler a
subscription, or it refuses to start."""

from __future__ import annotations

import pytest
import yaml

from sluice.bootstrap import check_batch_item_processor
from sluice.topology import REPO_TOPOLOGY, load_topology, parse_topology


def test_the_repository_topology_gives_every_processor_subscription_a_handler():
    check_batch_item_processor(load_topology())


def test_a_subscription_to_a_topic_nothing_handles_stops_the_processor_at_start():
    raw = yaml.safe_load(REPO_TOPOLOGY.read_text())
    raw["topics"]["invoices"] = {}
    raw["subscriptions"]["invoices-to-processor"] = {
        **raw["subscriptions"]["sweeps-to-processor"], "topic": "invoices",
    }  # fmt: skip
    with pytest.raises(RuntimeError, match="invoices-to-processor: no handler for topic"):
        check_batch_item_processor(parse_topology(yaml.safe_dump(raw)))


def test_a_handled_topic_no_subscription_pushes_stops_the_processor_at_start():
    raw = yaml.safe_load(REPO_TOPOLOGY.read_text())
    del raw["subscriptions"]["sweeps-to-processor"]
    with pytest.raises(RuntimeError, match="topic 'sweeps' has a handler but no subscription"):
        check_batch_item_processor(parse_topology(yaml.safe_dump(raw)))


def test_every_topic_the_code_names_is_declared_in_the_topology():
    from sluice import messages

    topology = load_topology()
    named = {v for k, v in vars(messages).items() if k.isupper() and isinstance(v, str)}
    assert named <= set(topology.topics), named - set(topology.topics)
