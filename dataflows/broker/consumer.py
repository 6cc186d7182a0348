"""Reading a topic with kafka-python, for the tools and watchers beside the flow (demo, report, dashboard,
Prometheus): they assign every partition themselves, so they join no consumer group and commit nothing."""

from __future__ import annotations

import time
from typing import Literal

import orjson
from kafka import KafkaConsumer, TopicPartition

from dataflows.broker.security import KafkaSecurity, kafka_python_settings


def assigned_consumer(
    bootstrap_servers: str,
    topic: str,
    start: Literal["beginning", "latest"] = "beginning",
    security: KafkaSecurity | None = None,
) -> tuple[KafkaConsumer, list[TopicPartition]]:
    """A consumer of every partition of `topic` (none if the topic does not exist), placed at the beginning or
    at the latest message of each partition (so a follower's first read already holds the current figures)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **kafka_python_settings(security)
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        if start == "beginning":
            consumer.seek_to_beginning(*partitions)
        else:
            end = consumer.end_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, max(0, end[tp] - 1))
    except BaseException:
        consumer.close()
        raise
    return consumer, partitions


def poll_json_objects(consumer: KafkaConsumer, timeout_ms: int = 500) -> list[dict]:
    """The records one poll brings whose value is a JSON object; any other value is skipped (these topics are
    read by people's tools, which show what they can rather than stop)."""
    objects = []
    for batch in consumer.poll(timeout_ms=timeout_ms).values():
        for record in batch:
            try:
                value = orjson.loads(record.value)
            except (orjson.JSONDecodeError, TypeError):
                continue
            if isinstance(value, dict):
                objects.append(value)
    return objects


def read_to_end(
    bootstrap_servers: str, topic: str, timeout_s: float = 30.0, security: KafkaSecurity | None = None
) -> list:
    """Every record of `topic` (all partitions) up to the end it has now; TimeoutError past `timeout_s`."""
    consumer, partitions = assigned_consumer(bootstrap_servers, topic, "beginning", security)
    try:
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
