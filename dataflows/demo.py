"""The end-to-end demo behind `task demo`: replay the transactions stream and show what reached Kafka.

python -m dataflows.demo [--events 20000] [--label-delay 2]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import orjson
from kafka import KafkaConsumer, TopicPartition

from dataflows import datasets
from dataflows.config import load_config
from dataflows.kafka_admin import BrokerError, require_topics
from dataflows.replay import make_producer, replay


def read_all(bootstrap: str, topic: str) -> list:
    """Every record of a topic, from the beginning to its current end."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list = []
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    config = load_config()
    parser = argparse.ArgumentParser(prog="python -m dataflows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="transactions to replay (default: %(default)s)")
    parser.add_argument(
        "--label-delay",
        type=float,
        default=2.0,
        help="seconds before each label follows its event on the labels topic (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    topics = config.topics
    try:
        require_topics(config.bootstrap_servers, [topics.events, topics.labels])
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(
        f"1. replaying {args.events:,} synthetic card payments to '{topics.events}' "
        f"(labels follow on '{topics.labels}' after {args.label_delay:g}s)"
    )
    result = replay(
        datasets.transactions(args.events),
        make_producer(config.bootstrap_servers),
        topics.events,
        topics.labels,
        args.label_delay,
    )
    print(f"   published {result.events:,} events and {result.labels:,} labels in {result.seconds:.1f}s")

    events = [orjson.loads(r.value) for r in read_all(config.bootstrap_servers, topics.events)]
    labels = [orjson.loads(r.value) for r in read_all(config.bootstrap_servers, topics.labels)]
    frauds = sum(1 for label in labels if label["label"])
    print(
        f"2. on the broker: {len(events):,} events, {len(labels):,} labels ({frauds:,} fraudulent, "
        f"{frauds / max(1, len(labels)):.1%})"
    )
    categories = Counter(e["category"] for e in events).most_common(4)
    print("   busiest categories: " + ", ".join(f"{name} {count:,}" for name, count in categories))
    print(f"   first event: {orjson.dumps(events[0]).decode() if events else '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
