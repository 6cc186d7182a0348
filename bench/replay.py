"""Benchmark: replaying the transactions stream into the broker, against a bare confluent-kafka producer.

    python -m bench.replay [--events 100000]

Both send the same pre-encoded events to fresh topics on the same broker; the bare producer is the ceiling.
Prints figures for people, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import uuid

import orjson
from confluent_kafka import Producer

from dataflows.broker.admin import delete_topics, ensure_topics
from dataflows.flow.config import load_config
from dataflows.tools import datasets
from dataflows.tools.replay import make_producer, replay


def bare_confluent(bootstrap: str, topic: str, events: list[dict]) -> float:
    """Seconds for librdkafka to deliver every event, encoded and keyed as replay does."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "acks": "all",
            "batch.size": 512 * 1024,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    start = time.perf_counter()
    for event in events:
        while True:
            try:
                producer.produce(topic, value=orjson.dumps(event), key=event["event_id"].encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events to send (default: %(default)s)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the topics (default: %(default)s)")
    args = parser.parse_args(argv)
    bootstrap = load_config().bootstrap_servers
    events = list(datasets.transactions(args.events))
    topics = [f"bench-replay-{uuid.uuid4().hex[:8]}", f"bench-bare-{uuid.uuid4().hex[:8]}"]
    ensure_topics(bootstrap, topics, args.partitions)
    try:
        result = replay(iter(events), make_producer(bootstrap), topics[0])
        bare_s = bare_confluent(bootstrap, topics[1], events)
    finally:
        delete_topics(bootstrap, topics)
    figures = {
        "benchmark": "replay",
        "events": args.events,
        "partitions": args.partitions,
        "replay_events_per_s": round(result.rate),
        "bare_confluent_events_per_s": round(args.events / bare_s),
        "ratio_replay_to_bare": round(result.rate / (args.events / bare_s), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"replay (kafka-python producer): {figures['replay_events_per_s']:>10,} events/s")
    print(f"bare confluent-kafka producer:  {figures['bare_confluent_events_per_s']:>10,} events/s (ceiling)")
    print(f"ratio replay / bare:            {figures['ratio_replay_to_bare']:>10.2f}")
    print(f"peak RSS:                       {figures['peak_rss_mb']:>10,} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
