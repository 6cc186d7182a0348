"""Reading a topic from its beginning to its current end: what the demo and the report show a person."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from dataflows.broker.security import KafkaSecurity, kafka_python_settings


def read_to_end(
    bootstrap_servers: str, topic: str, timeout_s: float = 30.0, security: KafkaSecurity | None = None
) -> list:
    """Every record of `topic` (all partitions) up to the end it has now; TimeoutError past `timeout_s`."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **kafka_python_settings(security)
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out reading topic '{topic}' from {bootstrap_servers}")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
