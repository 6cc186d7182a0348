"""Shared fixtures: the real local Kafka broker and throw-away topics on it."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings

from dataflows.broker.admin import BrokerError, check_broker, delete_topics, ensure_topics
from dataflows.flow.config import Topics

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")

# Timings never decide a test: no per-example deadline and no "input generation is slow" health check, which a
# busy 2-core machine (the broker starting, a flow in another test) trips at random.
settings.register_profile("eddy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("eddy")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker's address; fails (never skips) when no broker runs: the README's test command starts one."""
    try:
        check_broker(BOOTSTRAP, timeout_s=5)
    except BrokerError as exc:
        pytest.fail(f"{exc} (`scripts/task test` starts the local broker before running the tests)")
    return BOOTSTRAP


@pytest.fixture
def make_topics(kafka_bootstrap: str):
    """A factory of fresh, uniquely named topic sets; deleted after the test."""
    created: list[str] = []

    def make(partitions: int = 1) -> Topics:
        suffix = uuid.uuid4().hex[:10]
        topics = Topics(
            *(f"test-{name}-{suffix}" for name in ("events", "labels", "predictions", "metrics", "dlq", "alerts"))
        )
        ensure_topics(kafka_bootstrap, topics.all(), partitions)
        created.extend(topics.all())
        return topics

    yield make
    if created:
        delete_topics(kafka_bootstrap, created)
