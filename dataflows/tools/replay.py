"""Publish a data set to the events topic, optionally with its labels arriving later on the labels topic.

python -m dataflows.tools.replay transactions --limit 20000 --label-delay 5
python -m dataflows.tools.replay phishing --rate 200
python -m dataflows.tools.replay messages --label-delay 30   # with EDDY_CONFIG=configs/messages.toml
python -m dataflows.tools.replay my_events.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson
from kafka import KafkaProducer
from tqdm import tqdm

from dataflows.broker.admin import BrokerError, require_topics
from dataflows.broker.security import KafkaSecurity, kafka_python_settings
from dataflows.flow.codec import Invalid, parse_ts
from dataflows.flow.config import ConfigError, load_config
from dataflows.tools import datasets

log = logging.getLogger("eddy.replay")


@dataclass(frozen=True)
class ReplayResult:
    events: int
    labels: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


MESSAGES_DEFAULT = 20_000
"""Support messages `messages` generates without --limit."""


def load_dataset(
    name: str, limit: int | None, seed: int = 42, drift_at: float | None = 0.5, events_per_second: float = 1.0
) -> Iterator[dict]:
    """Events of a named data set (`phishing`, `transactions`, `agrawal`, `messages`) or of a JSONL/CSV file."""
    if name == "phishing":
        return datasets.phishing(limit)
    if name == "agrawal":
        return datasets.agrawal(limit or 100_000, seed=seed, drift_at=drift_at, events_per_second=events_per_second)
    if name == "transactions":
        return datasets.transactions(
            limit or 100_000, seed=seed, drift_at=drift_at, events_per_second=events_per_second
        )
    if name == "messages":
        return datasets.messages(limit or MESSAGES_DEFAULT, seed=seed, drift_at=drift_at)
    # A file is read whole before anything is sent, so a malformed line fails the replay before it starts.
    return iter(list(datasets.read_file(name, limit)))


def split_label(event: dict, delay_s: float = 0.0) -> tuple[dict, dict | None]:
    """The event without its label, and the label message for the labels topic (None if unlabelled).

    The label's `ts` places it in event time, `delay_s` after its event: that is where eddy learns it, so a
    replay gives the same predictions however fast it runs."""
    if "label" not in event:
        return event, None
    rest = {k: v for k, v in event.items() if k != "label"}
    label = {"event_id": event.get("event_id"), "label": event["label"]}
    with contextlib.suppress(Invalid):
        label["ts"] = parse_ts(event, "ts") + round(delay_s * 1000)
    return rest, label


def replay(
    events: Iterable[dict],
    producer: KafkaProducer,
    events_topic: str,
    labels_topic: str | None = None,
    label_delay_s: float | None = None,
    rate: float | None = None,
    key_field: str = "event_id",
    progress: tqdm | None = None,
    label_event_delay_s: float | None = None,
) -> ReplayResult:
    """Send every event; with `label_delay_s`, labels go to `labels_topic` that many seconds after their event.

    A label's `ts` is its event's plus `label_event_delay_s` (default: `label_delay_s`)."""
    event_delay = label_delay_s if label_event_delay_s is None else label_event_delay_s
    delayed: list[tuple[float, int, bytes, bytes | None]] = []
    counter = itertools.count()
    sent_events = sent_labels = 0
    start = time.monotonic()
    for sent_events, event in enumerate(events, start=1):
        if rate:
            ahead = start + (sent_events - 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        key = _key(event, key_field)
        label = None
        if label_delay_s is not None:
            event, label = split_label(event, event_delay)
        producer.send(events_topic, value=orjson.dumps(event), key=key)
        if label is not None:
            # Timed from the event's send, which stamps its Kafka timestamp (after any wait for metadata).
            heapq.heappush(delayed, (time.monotonic() + label_delay_s, next(counter), orjson.dumps(label), key))
        sent_labels += _send_due(producer, labels_topic, delayed, time.monotonic())
        if progress is not None:
            progress.update(1)
    producer.flush()
    while delayed:
        time.sleep(max(0.0, delayed[0][0] - time.monotonic()))
        sent_labels += _send_due(producer, labels_topic, delayed, time.monotonic())
    producer.flush()
    return ReplayResult(sent_events, sent_labels, time.monotonic() - start)


def _key(event: dict, key_field: str) -> bytes | None:
    value = event.get(key_field)
    return None if value is None else str(value).encode()


def _send_due(producer: KafkaProducer, topic: str | None, delayed: list, now: float) -> int:
    sent = 0
    while delayed and delayed[0][0] <= now:
        _, _, value, key = heapq.heappop(delayed)
        producer.send(topic, value=value, key=key)
        sent += 1
    return sent


def make_producer(bootstrap_servers: str, linger_ms: int = 20, security: KafkaSecurity | None = None) -> KafkaProducer:
    """`linger_ms` batches sends for throughput; a message's timestamp is taken before it lingers."""
    return KafkaProducer(
        **kafka_python_settings(security),
        bootstrap_servers=bootstrap_servers,
        client_id="eddy-replay",
        acks="all",
        linger_ms=linger_ms,
        batch_size=512 * 1024,
        max_request_size=2 * 1024 * 1024,
    )


def build_parser() -> argparse.ArgumentParser:
    config = load_config()
    parser = argparse.ArgumentParser(
        prog="python -m dataflows.tools.replay",
        description="Publish a data set to eddy's events topic; optionally publish its labels later on the "
        "labels topic, as labels arrive in real life (chargebacks, moderator decisions).",
    )
    parser.add_argument(
        "dataset",
        help="'phishing' (River's Phishing data set), 'transactions' (synthetic card "
        "payments with fraud and a concept drift), 'agrawal' (River's Agrawal loan generator whose rule changes "
        "at --drift-at; EDDY_CONFIG=configs/agrawal.toml), 'messages' (support messages with spam whose vocabulary "
        "changes halfway; a text field, for EDDY_CONFIG=configs/messages.toml), or a .jsonl/.csv file of events",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="publish at most N events (transactions, agrawal: how many to generate, default 100000; messages: 20000)",
    )
    parser.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    parser.add_argument(
        "--label-delay",
        type=float,
        default=None,
        metavar="SECONDS",
        help="strip labels from events and publish them on the labels topic this many seconds "
        "later (default: labels stay inline in the events)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="transactions, agrawal, messages: random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--drift-at",
        type=float,
        default=0.5,
        help="transactions, agrawal, messages: fraction of the stream where the fraud pattern (the loan rule, the spam "
        "vocabulary) changes "
        "(default: %(default)s; negative for no drift)",
    )
    parser.add_argument(
        "--events-per-second",
        type=float,
        default=1.0,
        metavar="N",
        help="transactions, agrawal: events per second of event time, i.e. how close their `ts` are "
        "(default: %(default)s; 100 packs the same events 100x closer, so windows hold 100x more of them); "
        "not the sending rate (--rate)",
    )
    parser.add_argument(
        "--key", default="event_id", help="event field used as the Kafka message key (default: %(default)s)"
    )
    parser.add_argument(
        "--bootstrap-servers", default=config.bootstrap_servers, help="Kafka bootstrap servers (default: %(default)s)"
    )
    parser.add_argument("--events-topic", default=config.topics.events, help="default: %(default)s")
    parser.add_argument("--labels-topic", default=config.topics.labels, help="default: %(default)s")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 0:
        print("error: --limit must be >= 0", file=sys.stderr)
        return 2
    if not args.events_per_second > 0:
        print("error: --events-per-second must be > 0", file=sys.stderr)
        return 2
    drift_at = args.drift_at if args.drift_at >= 0 else None
    try:
        events = load_dataset(args.dataset, args.limit, args.seed, drift_at, args.events_per_second)
        topics = [args.events_topic] + ([args.labels_topic] if args.label_delay is not None else [])
        security = load_config().kafka_security
        require_topics(args.bootstrap_servers, topics, security=security)
        producer = make_producer(args.bootstrap_servers, security=security)
        defaults = {"transactions": 100_000, "agrawal": 100_000, "messages": MESSAGES_DEFAULT}
        total = args.limit if args.limit is not None else defaults.get(args.dataset)
        with tqdm(
            total=total, unit="ev", disable=args.quiet, desc=f"replay {args.dataset}", file=sys.stderr, mininterval=0.5
        ) as bar:
            result = replay(
                events, producer, args.events_topic, args.labels_topic, args.label_delay, args.rate, args.key, bar
            )
        producer.close()
    except datasets.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    labels = f", {result.labels} labels to '{args.labels_topic}'" if args.label_delay is not None else ""
    print(
        f"published {result.events} events to '{args.events_topic}'{labels} "
        f"in {result.seconds:.1f}s ({result.rate:,.0f} events/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
