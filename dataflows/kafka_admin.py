"""Broker checks and topic creation, so that a misconfiguration fails in seconds with a clear message.

Bytewax's Kafka connector hangs forever when the broker is down and panics on a missing topic; eddy asks
the broker first.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The broker cannot be reached or lacks what eddy needs; the message says what to do."""


def _addresses(bootstrap_servers: str) -> list[tuple[str, int]]:
    out = []
    for entry in bootstrap_servers.split(","):
        entry = entry.strip()
        if not entry:
            continue
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise BrokerError(f"bootstrap server {entry!r} is not HOST:PORT (KAFKA_BOOTSTRAP_SERVERS)")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise BrokerError("no bootstrap server given (KAFKA_BOOTSTRAP_SERVERS is empty)")
    return out


def check_broker(bootstrap_servers: str, timeout_s: float = 5.0) -> None:
    """Fail fast unless at least one bootstrap server accepts TCP connections and answers Kafka's API."""
    reachable = []
    for host, port in _addresses(bootstrap_servers):
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                reachable.append(f"{host}:{port}")
        except OSError:
            continue
    if not reachable:
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap_servers}. Start the local one with `task kafka:up`, "
            "or point eddy at a running cluster with KAFKA_BOOTSTRAP_SERVERS=host:port."
        )
    admin = _admin(",".join(reachable), timeout_s)
    admin.close()


def _admin(bootstrap_servers: str, timeout_s: float) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="eddy-admin",
            request_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        raise BrokerError(
            f"something listens at {bootstrap_servers} but it does not answer as a Kafka broker: {exc}"
        ) from exc


def partition_counts(bootstrap_servers: str, topics: Iterable[str], timeout_s: float = 5.0) -> dict[str, int]:
    """Partitions of each existing topic among `topics` (missing topics are absent from the result)."""
    check_broker(bootstrap_servers, timeout_s)
    admin = _admin(bootstrap_servers, timeout_s)
    try:
        wanted = set(topics)
        existing = wanted & set(admin.list_topics())
        if not existing:
            return {}
        return {d.get("name", d.get("topic")): len(d["partitions"]) for d in admin.describe_topics(sorted(existing))}
    finally:
        admin.close()


def require_topics(bootstrap_servers: str, topics: Iterable[str], timeout_s: float = 5.0) -> dict[str, int]:
    """Partition counts of `topics`; a missing topic fails with the command that creates it."""
    topics = list(topics)
    counts = partition_counts(bootstrap_servers, topics, timeout_s)
    missing = [t for t in topics if t not in counts]
    if missing:
        raise BrokerError(
            f"topic(s) {', '.join(missing)} do not exist on {bootstrap_servers}. "
            "Create them with `task topics` (or `python -m dataflows.topics`)."
        )
    return counts


def ensure_topics(
    bootstrap_servers: str, topics: Iterable[str], partitions: int, timeout_s: float = 10.0
) -> dict[str, str]:
    """Create the topics that are missing; returns what happened to each ("created" or "exists (N partitions)")."""
    topics = list(dict.fromkeys(topics))
    existing = partition_counts(bootstrap_servers, topics, timeout_s)
    result = {t: f"exists ({n} partitions)" for t, n in existing.items()}
    missing = [t for t in topics if t not in existing]
    if missing:
        admin = _admin(bootstrap_servers, timeout_s)
        try:
            admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()
        _wait_for(bootstrap_servers, missing, timeout_s)
        result.update({t: f"created ({partitions} partitions)" for t in missing})
    return {t: result[t] for t in topics}


def _wait_for(bootstrap_servers: str, topics: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if set(topics) <= set(partition_counts(bootstrap_servers, topics, timeout_s)):
            return
        time.sleep(0.1)
    raise BrokerError(f"topics {topics} were created but did not appear within {timeout_s}s")


def delete_topics(bootstrap_servers: str, topics: Iterable[str], timeout_s: float = 10.0) -> None:
    """Delete the topics that exist (tests and `task topics:reset`)."""
    existing = list(partition_counts(bootstrap_servers, topics, timeout_s))
    if not existing:
        return
    admin = _admin(bootstrap_servers, timeout_s)
    try:
        admin.delete_topics(existing, timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()
    deadline = time.monotonic() + timeout_s
    while partition_counts(bootstrap_servers, existing, timeout_s) and time.monotonic() < deadline:
        time.sleep(0.1)
