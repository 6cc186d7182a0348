"""Kafka output that waits for the broker once per epoch, not once per micro-batch, and never loses a message quietly.

Bytewax 0.21's `KafkaSink` calls `producer.flush()` after every micro-batch: the worker stops until the broker
has acknowledged the batch, and every event's latency pays that wait (its cost: docs/benchmarks.md, flow). Here
`write_batch` only hands messages to librdkafka, which sends them from its own thread within `linger.ms`; the
flush happens in `snapshot()`, which Bytewax calls at the end of every epoch before it commits the epoch. So a
crash loses no output of a committed epoch: at-least-once. A message the broker refuses (after librdkafka's
retries) stops the flow with the topic and the reason, where Bytewax's sink drops it unreported; a resume then
writes the epoch again.

A broker that goes away holds the epoch's end for at most `wait_s` seconds (`[flow] broker_wait_s`): the
flush waits in steps, logs that the broker is unreachable once and then every `LOG_EVERY_S`, and returns as
soon as the broker has taken every message, so a broker back within the bound costs a pause and nothing
else. Past the bound it raises `BrokerUnreachable`, whose message says how to resume; the epoch is then not
committed, so a resume from the recovery directory writes it again. librdkafka's own message timeout is off
(`message.timeout.ms = 0`): the bound here is the only one, and a message never expires in the queue.

In the flow (`write`), giving up logs that message and ends the process with `EXIT_BROKER_UNREACHABLE`
rather than raising: Bytewax 0.21 turns an exception in a sink's snapshot into a Rust panic whose clean-up
calls the sink's `close()`, which waits for the broker once more, then aborts (SIGABRT) under a long
backtrace that buries the message. Ending there is what a kill does, which the recovery directory survives.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Stream
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, Producer

from dataflows.broker.client_logs import client_logger

log = logging.getLogger("eddy")

LINGER_MS = 1
"""How long librdkafka gathers messages before it sends them: short, since the worker does not wait for them."""
WAIT_S = 120.0
"""How long an epoch's end waits for an unreachable broker by default (`[flow] broker_wait_s`)."""
STEP_S = 1.0
"""A flush waits in steps this long, so that it can report the wait and give up on time."""
LOG_EVERY_S = 30.0
"""While the broker stays unreachable, a line every this many seconds (the first one after `STEP_S`)."""
EXIT_BROKER_UNREACHABLE = 3
"""The flow's exit status when it gave up waiting for the broker."""


class DeliveryError(RuntimeError):
    """The broker refused a message for good (after librdkafka's retries)."""


class BrokerUnreachable(RuntimeError):
    """The broker did not take an epoch's messages within the configured bound."""


class _BrokerWait:
    """One wait for the broker, bounded by `wait_s`: logs when it starts to matter, and periodically after."""

    def __init__(self, topic: str, brokers: str, wait_s: float, what: str, exit_on_give_up: bool = False):
        self.topic, self.brokers, self.wait_s, self.what = topic, brokers, wait_s, what
        self.exit_on_give_up = exit_on_give_up
        self.started = time.monotonic()
        self.logged_at: float | None = None

    def left_s(self) -> float:
        return self.wait_s - (time.monotonic() - self.started)

    def still_waiting(self, pending: int) -> None:
        """Called after each step without success: a log line now and then, `BrokerUnreachable` past the bound."""
        waited = time.monotonic() - self.started
        if waited >= self.wait_s:
            error = BrokerUnreachable(
                f"the Kafka broker at {self.brokers} has not taken {pending} message(s) for topic '{self.topic}' "
                f"within {self.wait_s:g} s ([flow] broker_wait_s, EDDY_BROKER_WAIT_S); eddy stops here rather than "
                "lose them. Once the broker is back, start the flow again with the same recovery directory "
                "(`-r DIR`, as `task run:recover` does): it resumes from its last snapshot and writes again "
                "what this epoch had not delivered. A run without a recovery directory cannot resume "
                "(README, Operating eddy)."
            )
            if self.exit_on_give_up:
                log.error("%s", error)
                logging.shutdown()
                sys.stderr.flush()
                os._exit(EXIT_BROKER_UNREACHABLE)
            raise error
        if waited < STEP_S:
            return
        if self.logged_at is None or time.monotonic() - self.logged_at >= LOG_EVERY_S:
            log.warning(
                "Kafka broker at %s unreachable: %d message(s) for '%s' %s for %.0f s; the flow keeps its state "
                "and carries on when the broker is back (gives up after %g s, [flow] broker_wait_s)",
                self.brokers,
                pending,
                self.topic,
                self.what,
                waited,
                self.wait_s,
            )
            self.logged_at = time.monotonic()

    def done(self) -> None:
        if self.logged_at is not None:
            log.info(
                "Kafka broker at %s reachable again: '%s' delivered after %.0f s",
                self.brokers,
                self.topic,
                time.monotonic() - self.started,
            )


class _EpochFlushPartition(StatefulSinkPartition[KafkaSinkMessage, None]):
    def __init__(self, config: dict[str, Any], topic: str, wait_s: float = WAIT_S, exit_on_give_up: bool = False):
        self._producer = Producer({**config, "on_delivery": self._delivered})
        self._topic = topic
        self._brokers = str(config.get("bootstrap.servers", ""))
        self._wait_s = wait_s
        self._exit_on_give_up = exit_on_give_up
        self._failures: list[str] = []

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failures.append(str(error))

    def write_batch(self, values: list[KafkaSinkMessage]) -> None:
        produce, poll = self._producer.produce, self._producer.poll
        for message in values:
            kwargs = {"timestamp": message.timestamp} if message.timestamp else {}
            wait: _BrokerWait | None = None
            while True:
                try:
                    produce(message.topic or self._topic, message.value, message.key, headers=message.headers, **kwargs)
                    break
                except BufferError:  # librdkafka's queue is full: wait for the broker to take some
                    wait = wait or self._wait("queued (the queue is full)")
                    poll(0.05)
                    self._raise_failures()
                    wait.still_waiting(len(self._producer))
            if wait is not None:
                wait.done()
        poll(0)  # serve delivery reports, so failures surface and the queue drains
        self._raise_failures()

    def snapshot(self) -> None:
        wait = self._wait("not acknowledged")
        while pending := self._producer.flush(min(STEP_S, max(0.0, wait.left_s()))):
            self._raise_failures()
            wait.still_waiting(pending)
        self._raise_failures()
        wait.done()

    def close(self) -> None:
        self.snapshot()

    def _wait(self, what: str) -> _BrokerWait:
        return _BrokerWait(self._topic, self._brokers, self._wait_s, what, self._exit_on_give_up)

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(
                f"Kafka refused {len(failures)} message(s) for topic '{self._topic}': {failures[0]}"
                + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
            )


class EpochFlushKafkaSink(FixedPartitionedSink[KafkaSinkMessage, None]):
    """One topic as one sink partition whose broker acknowledgements are awaited at epoch ends.

    Every worker can reach the broker, so each lists the partition; Bytewax writes it on one of them.
    """

    def __init__(
        self,
        brokers: list[str],
        topic: str,
        add_config: dict[str, Any] | None = None,
        wait_s: float = WAIT_S,
        exit_on_give_up: bool = False,
    ):
        self._brokers = brokers
        self._topic = topic
        self._add_config = add_config or {}
        self._wait_s = wait_s
        self._exit_on_give_up = exit_on_give_up

    def list_parts(self) -> list[str]:
        return [self._topic]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _EpochFlushPartition:
        config = {
            "bootstrap.servers": ",".join(self._brokers),
            "linger.ms": LINGER_MS,
            "message.timeout.ms": 0,
            "logger": client_logger(),
            **self._add_config,
        }
        return _EpochFlushPartition(config, self._topic, self._wait_s, self._exit_on_give_up)


def write(
    step_id: str,
    up: Stream[KafkaSinkMessage],
    *,
    brokers: list[str],
    topic: str,
    wait_s: float = WAIT_S,
    add_config: dict[str, Any] | None = None,
) -> None:
    """Write encoded messages to `topic`, flushing at epoch ends, waiting at most `wait_s` for the broker and
    ending the process past it (see module docstring); `add_config` is librdkafka settings (TLS, SASL) for its
    producer."""
    keyed = op.key_on(f"{step_id}_as_one_partition", up, _same_key)
    sink = EpochFlushKafkaSink(brokers, topic, add_config, wait_s=wait_s, exit_on_give_up=True)
    op.output(step_id, keyed, sink)


def _same_key(_message: KafkaSinkMessage) -> str:
    return ""
