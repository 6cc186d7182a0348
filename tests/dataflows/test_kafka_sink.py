"""The Kafka output against the real broker: acknowledgements awaited at epoch ends, refusals never silent."""

from __future__ import annotations

import pytest
from bytewax.connectors.kafka import KafkaSinkMessage

from dataflows.broker.consumer import read_to_end
from dataflows.broker.sink import DeliveryError, EpochFlushKafkaSink

pytestmark = pytest.mark.kafka


def test_an_epochs_messages_are_on_the_broker_once_its_snapshot_is_taken(kafka_bootstrap, make_topics):
    topics = make_topics()
    sink = EpochFlushKafkaSink([kafka_bootstrap], topics.predictions)
    assert sink.list_parts() == [topics.predictions]
    part = sink.build_part("write_predictions", topics.predictions, None)
    part.write_batch([KafkaSinkMessage(key=b"k%d" % i, value=b"v%d" % i) for i in range(5)])
    part.write_batch([KafkaSinkMessage(key=None, value=b"v5", timestamp=1_700_000_000_000)])
    assert part.snapshot() is None  # Bytewax commits the epoch after this returns
    records = read_to_end(kafka_bootstrap, topics.predictions, timeout_s=10)
    assert [r.value for r in records] == [b"v%d" % i for i in range(6)]
    assert [r.key for r in records][:2] == [b"k0", b"k1"]
    assert records[-1].timestamp == 1_700_000_000_000


def test_a_message_the_broker_refuses_stops_the_flow_with_the_topic_and_reason(kafka_bootstrap):
    missing = "no-such-topic-for-the-sink"  # the project's broker creates no topic on first use
    sink = EpochFlushKafkaSink([kafka_bootstrap], missing, {"message.timeout.ms": 1500})
    part = sink.build_part("write_predictions", missing, None)
    part.write_batch([KafkaSinkMessage(key=None, value=b"lost?")])
    with pytest.raises(DeliveryError, match=f"topic '{missing}'.*(Unknown topic|timed out)"):
        part.snapshot()
