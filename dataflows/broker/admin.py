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

from dataflows.broker.security import KafkaSecurity, kafka_python_settings, librdkafka_settings

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


def check_broker(bootstrap_servers: str, timeout_s: float = 5.0, security: KafkaSecurity | None = None) -> None:
    """Fail fast unless at least one bootstrap server accepts TCP connections and answers Kafka's API (and,
    with TLS or SASL, accepts eddy's certificates and credentials)."""
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
    if security is not None and security.protocol != "PLAINTEXT":
        _check_credentials(",".join(reachable), security, timeout_s)
    admin = _admin(",".join(reachable), timeout_s, security)
    admin.close()


def _check_credentials(bootstrap_servers: str, security: KafkaSecurity, timeout_s: float) -> None:
    """Raise a `BrokerError` that names the cause when the broker refuses the TLS handshake or the SASL login.

    kafka-python retries a refused login until its 30 s bootstrap timeout and then says only that it could
    not bootstrap; librdkafka reports the refusal itself within a round trip, so it asks first.
    """
    from confluent_kafka import KafkaError as RdKafkaError
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    refusals: list[str] = []

    def on_error(error: RdKafkaError) -> None:
        if error.code() in (RdKafkaError._AUTHENTICATION, RdKafkaError._SSL):
            refusals.append(error.str())

    client = AdminClient(
        {"bootstrap.servers": bootstrap_servers, **librdkafka_settings(security), "error_cb": on_error, "log_level": 0}
    )
    deadline = time.monotonic() + timeout_s
    while not refusals:
        try:
            client.list_topics(timeout=0.25)
            return
        except KafkaException:
            client.poll(0)  # serves error_cb
            if time.monotonic() > deadline:
                break
    if refusals and security.sasl and "SASL" in refusals[0]:
        raise BrokerError(
            f"the Kafka broker at {bootstrap_servers} refused eddy's SASL login: {refusals[0]}; "
            "check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
        )
    if refusals:
        raise BrokerError(
            f"the TLS handshake with the Kafka broker at {bootstrap_servers} failed: {refusals[0]}; check "
            "KAFKA_SSL_CA_LOCATION (the CA that signed the broker's certificate) and, if the broker asks for "
            "one, the client certificate and key"
        )
    raise BrokerError(
        f"no Kafka broker answered at {bootstrap_servers} over {security.describe()} within {timeout_s:g}s; "
        "check KAFKA_SECURITY_PROTOCOL matches the broker's listener on that port"
    )


def _admin(bootstrap_servers: str, timeout_s: float, security: KafkaSecurity | None = None) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="eddy-admin",
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            **kafka_python_settings(security),
        )
    except KafkaError as exc:
        protocol = security.protocol if security is not None else "PLAINTEXT"
        raise BrokerError(
            f"something listens at {bootstrap_servers} but it does not answer as a Kafka broker over {protocol}: "
            f"{exc} (if that listener wants TLS or SASL, set KAFKA_SECURITY_PROTOCOL and its settings; see the "
            "README, Operating eddy)"
        ) from exc


def partition_counts(
    bootstrap_servers: str, topics: Iterable[str], timeout_s: float = 5.0, security: KafkaSecurity | None = None
) -> dict[str, int]:
    """Partitions of each existing topic among `topics` (missing topics are absent from the result)."""
    check_broker(bootstrap_servers, timeout_s, security)
    admin = _admin(bootstrap_servers, timeout_s, security)
    try:
        wanted = set(topics)
        existing = wanted & set(admin.list_topics())
        if not existing:
            return {}
        return {d.get("name", d.get("topic")): len(d["partitions"]) for d in admin.describe_topics(sorted(existing))}
    finally:
        admin.close()


def require_topics(
    bootstrap_servers: str, topics: Iterable[str], timeout_s: float = 5.0, security: KafkaSecurity | None = None
) -> dict[str, int]:
    """Partition counts of `topics`; a missing topic fails with the command that creates it."""
    topics = list(topics)
    counts = partition_counts(bootstrap_servers, topics, timeout_s, security)
    missing = [t for t in topics if t not in counts]
    if missing:
        raise BrokerError(
            f"topic(s) {', '.join(missing)} do not exist on {bootstrap_servers}. "
            "Create them with `task topics` (or `python -m dataflows.tools.topics`)."
        )
    return counts


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    partitions: int,
    timeout_s: float = 10.0,
    security: KafkaSecurity | None = None,
) -> dict[str, str]:
    """Create the topics that are missing; returns what happened to each ("created" or "exists (N partitions)")."""
    topics = list(dict.fromkeys(topics))
    existing = partition_counts(bootstrap_servers, topics, timeout_s, security)
    result = {t: f"exists ({n} partitions)" for t, n in existing.items()}
    missing = [t for t in topics if t not in existing]
    if missing:
        admin = _admin(bootstrap_servers, timeout_s, security)
        try:
            admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()
        _wait_for(bootstrap_servers, missing, timeout_s, security)
        result.update({t: f"created ({partitions} partitions)" for t in missing})
    return {t: result[t] for t in topics}


def _wait_for(bootstrap_servers: str, topics: list[str], timeout_s: float, security: KafkaSecurity | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if set(topics) <= set(partition_counts(bootstrap_servers, topics, timeout_s, security)):
            return
        time.sleep(0.1)
    raise BrokerError(f"topics {topics} were created but did not appear within {timeout_s}s")


def delete_topics(
    bootstrap_servers: str, topics: Iterable[str], timeout_s: float = 10.0, security: KafkaSecurity | None = None
) -> None:
    """Delete the topics that exist (tests and `task topics:reset`)."""
    existing = list(partition_counts(bootstrap_servers, topics, timeout_s, security))
    if not existing:
        return
    admin = _admin(bootstrap_servers, timeout_s, security)
    try:
        admin.delete_topics(existing, timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()
    deadline = time.monotonic() + timeout_s
    while partition_counts(bootstrap_servers, existing, timeout_s, security) and time.monotonic() < deadline:
        time.sleep(0.1)
