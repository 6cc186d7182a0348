"""Reading a topic to its end, for tests that check what reached the real broker."""

from __future__ import annotations

import time

from dataflows.broker.consumer import assigned_consumer


def read_topic(bootstrap: str, topic: str, expected: int | None = None, timeout_s: float = 30.0) -> list:
    """Every record of `topic` (all partitions, from the beginning); waits for `expected` records if given.

    Without `expected` it reads to the end offsets and fails if the deadline comes first: a test that compared
    part of a topic would report missing records that are on the broker, or miss records it should see."""
    consumer, partitions = assigned_consumer(bootstrap, topic)
    try:
        records: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                records.extend(batch)
            if expected is not None and len(records) >= expected:
                break
            if expected is None:
                end = consumer.end_offsets(partitions)
                if all(consumer.position(tp) >= end[tp] for tp in partitions):
                    break
        else:
            if expected is None:
                raise AssertionError(f"read {len(records)} records of '{topic}' in {timeout_s} s, not yet its end")
        return records
    finally:
        consumer.close()
