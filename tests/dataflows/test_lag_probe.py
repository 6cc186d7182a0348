"""Consumer lag against the real broker: end offsets less the positions read, end offsets refreshed on a clock."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from dataflows.broker.offsets import LagProbe
from dataflows.flow.messages import Origin

pytestmark = pytest.mark.kafka


def _produce(bootstrap: str, topic: str, partition: int, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        producer.produce(topic, value=b"x%d" % i, partition=partition)
    assert producer.flush(10) == 0


def test_lag_is_end_offsets_less_positions_read(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=2)
    _produce(kafka_bootstrap, topics.events, 0, 7)
    _produce(kafka_bootstrap, topics.events, 1, 3)
    probe = LagProbe(kafka_bootstrap, [topics.events, topics.labels], {topics.events: 2, topics.labels: 2})
    assert probe() == {topics.events: 10, topics.labels: 0}
    probe.seen(Origin(topics.events, 0, 4))
    probe.seen(Origin(topics.events, 0, 2))  # an older offset never moves the position back
    probe.seen(Origin(topics.events, 1, 2))
    assert probe() == {topics.events: 2, topics.labels: 0}


def test_end_offsets_are_asked_for_at_most_every_refresh(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=1)
    _produce(kafka_bootstrap, topics.events, 0, 5)
    cached = LagProbe(kafka_bootstrap, [topics.events], {topics.events: 1}, refresh_s=3600)
    fresh = LagProbe(kafka_bootstrap, [topics.events], {topics.events: 1}, refresh_s=0)
    assert cached() == fresh() == {topics.events: 5}
    _produce(kafka_bootstrap, topics.events, 0, 4)
    cached.seen(Origin(topics.events, 0, 1))
    fresh.seen(Origin(topics.events, 0, 1))
    assert cached() == {topics.events: 3}  # old end offset, new position
    assert fresh() == {topics.events: 7}


def test_after_the_first_report_end_offsets_are_refreshed_off_the_callers_thread(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=1)
    _produce(kafka_bootstrap, topics.events, 0, 5)
    probe = LagProbe(kafka_bootstrap, [topics.events], {topics.events: 1}, refresh_s=0.05)
    asked_on = []
    ask = probe._end_offsets

    def recording():
        asked_on.append(threading.current_thread())
        return ask()

    probe._end_offsets = recording
    assert probe() == {topics.events: 5}  # the first report asks on the caller's thread
    _produce(kafka_bootstrap, topics.events, 0, 4)
    deadline = time.monotonic() + 10
    while probe() != {topics.events: 9} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe() == {topics.events: 9}
    assert asked_on[0] is threading.current_thread()
    assert len(asked_on) > 1 and all(thread is not threading.current_thread() for thread in asked_on[1:])
