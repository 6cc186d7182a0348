"""Broker checks and topic creation fail fast and say what to do."""

from __future__ import annotations

import socket
import time

import pytest

from dataflows.broker.admin import BrokerError, check_broker, ensure_topics, partition_counts, require_topics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_broker_fails_within_seconds_with_advice():
    start = time.monotonic()
    with pytest.raises(BrokerError, match=r"no Kafka broker answers at localhost:\d+\. Start the local one"):
        check_broker(f"localhost:{_free_port()}", timeout_s=2)
    assert time.monotonic() - start < 10


def test_a_malformed_bootstrap_address_is_named():
    with pytest.raises(BrokerError, match="'localhost' is not HOST:PORT"):
        check_broker("localhost")


@pytest.mark.kafka
def test_topics_are_created_once(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=2)
    again = ensure_topics(kafka_bootstrap, topics.all(), partitions=5)
    assert set(again.values()) == {"exists (2 partitions)"}
    assert partition_counts(kafka_bootstrap, topics.all()) == dict.fromkeys(topics.all(), 2)


@pytest.mark.kafka
def test_a_missing_topic_is_named(kafka_bootstrap, make_topics):
    topics = make_topics()
    with pytest.raises(BrokerError, match=r"topic\(s\) nope-missing-1 do not exist.*task topics"):
        require_topics(kafka_bootstrap, [topics.events, "nope-missing-1"])
