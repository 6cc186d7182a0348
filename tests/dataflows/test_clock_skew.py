"""A producer with a broken clock cannot stop the flow: the real broker and a real tailing flow process.

An event stamped in 2096 (inside the accepted 2000..2100 range), followed by a lull long enough for every
partition to go idle, would move the watermark to 2096 and make every later event late. It is
dead-lettered `future_ts` instead, and the events after the lull are all scored.
"""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from dataflows.tools import datasets
from tests.flowkit import dead_letter_reasons, flow_env, publish, start_flow_logged, wait_until_started
from tests.kafka_io import read_topic

pytestmark = pytest.mark.kafka

PARTITIONS = 3
IDLE_TIMEOUT_S = 5.0  # eddy.toml's [flow] idle_timeout_s, which the flow process reads
BROKEN_CLOCK_TS = "2096-02-29T12:00:00+00:00"


def _accounted(bootstrap: str, topics, expected: int, timeout_s: float) -> tuple[list[dict], list]:
    """Predictions and dead letters, once together they account for `expected` messages (or at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        predictions = [orjson.loads(r.value) for r in read_topic(bootstrap, topics.predictions, timeout_s=5)]
        dead = read_topic(bootstrap, topics.dead_letters, timeout_s=5)
        if len(predictions) + len(dead) >= expected or time.monotonic() > deadline:
            return predictions, dead
        time.sleep(0.5)


def _run_with_a_broken_clock(bootstrap: str, topics, log, bad_partitions: list[int]):
    env = flow_env(topics, bootstrap, EDDY_TAIL="true", EDDY_ENSEMBLE="false")
    flow = start_flow_logged(env, log)
    try:
        wait_until_started(log)
        # Dense in event time (1,100 events in 1.1 s, within the allowed lateness): after the lull the
        # partitions wake up one after the other, and the first one read must not make the others' events
        # late (the idle rule's own trade-off, which is not what this test is about).
        events = list(datasets.transactions(1_100, seed=21, events_per_second=1_000))
        before, after = events[:100], events[100:]
        publish(bootstrap, topics.events, before, partition=lambda i, _: i % PARTITIONS)
        bad = [{**before[-1], "event_id": f"broken-clock-{p}", "ts": BROKEN_CLOCK_TS} for p in bad_partitions]
        publish(bootstrap, topics.events, bad, partition=lambda i, _: bad_partitions[i])
        # Wait for the flow to have dealt with the bad events (today's code releases them at the idle
        # timeout, so this wait is also the lull), then stay silent past the idle timeout for certain.
        _accounted(bootstrap, topics, len(before) + len(bad), timeout_s=120)
        time.sleep(IDLE_TIMEOUT_S + 2)
        publish(bootstrap, topics.events, after, partition=lambda i, _: i % PARTITIONS)
        predictions, dead = _accounted(bootstrap, topics, len(events) + len(bad), timeout_s=180)
    finally:
        flow.send_signal(signal.SIGINT)
        flow.wait(timeout=30)
    return events, bad, predictions, dead


@pytest.mark.parametrize("bad_partitions", [[0], list(range(PARTITIONS))], ids=["one_partition", "each_partition"])
def test_an_event_from_a_broken_clock_is_dead_lettered_and_the_events_after_a_lull_are_all_scored(
    kafka_bootstrap, make_topics, tmp_path, bad_partitions
):
    topics = make_topics(partitions=PARTITIONS)
    log = tmp_path / "flow.log"

    events, bad, predictions, dead = _run_with_a_broken_clock(kafka_bootstrap, topics, log, bad_partitions)

    scored = {p["event_id"] for p in predictions}
    missing = [e["event_id"] for e in events if e["event_id"] not in scored]
    reasons = dead_letter_reasons(dead)
    assert not missing, (
        f"{len(missing)} of {len(events)} events not scored; dead letters: "
        f"{sorted({r for r, _ in reasons})}\n{log.read_text()[-3000:]}"
    )
    assert not scored & {b["event_id"] for b in bad}
    assert [reason for reason, _ in reasons] == ["future_ts"] * len(bad)
    assert all("2096" in error and "Kafka timestamp" in error for _, error in reasons), reasons
    assert sorted(orjson.loads(r.value)["event_id"] for r in dead) == sorted(b["event_id"] for b in bad)
    metrics = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, topics.metrics, timeout_s=5)]
    assert metrics and metrics[-1]["dead_letters"].get("future_ts") == len(bad), metrics[-1:]
