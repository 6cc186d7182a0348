"""Bytewax's Kafka input without the wait in every partition poll: same step ids, offsets and messages.

Bytewax 0.21's `KafkaSource` polls each partition with `consume(batch_size, timeout=1 ms)`, and librdkafka waits
out the whole timeout unless `batch_size` messages are already there. So every poll of every input partition
(six for two topics of three partitions) waits even with messages waiting, in every cycle of the worker, which
every event's latency pays, and more since the backlog it builds grows the next cycle (its cost:
docs/benchmarks.md, costs behind the code's choices). Here a poll returns at once with what the consumer has
fetched already (librdkafka fetches in the background); Bytewax waits 1 ms before it polls again a partition
that returned nothing, so an idle flow does not spin.
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.connectors.kafka.operators import KafkaOpOut, _kafka_error_split
from bytewax.dataflow import Dataflow, operator

from dataflows.broker.client_logs import client_logger


class _NoWaitConsumer:
    """A confluent-kafka `Consumer` whose `consume` returns at once; everything else passes through."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list:
        return self._consumer.consume(num_messages, 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class NoWaitKafkaSource(KafkaSource):
    """`KafkaSource` whose partitions never block in `consume` (Bytewax 0.21.1, its last release)."""

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        part = super().build_part(step_id, for_part, resume_state)
        part._consumer = _NoWaitConsumer(part._consumer)
        return part


@operator
def read(
    step_id: str,
    flow: Dataflow,
    *,
    brokers: list[str],
    topics: list[str],
    tail: bool,
    batch_size: int,
    add_config: dict[str, Any] | None = None,
) -> KafkaOpOut:
    """`bytewax.connectors.kafka.operators.input` on `NoWaitKafkaSource`, with the same inner step ids, so
    recovery directories written by either resume with the other. `add_config` is librdkafka settings (TLS,
    SASL) for its consumers."""
    source = NoWaitKafkaSource(
        brokers,
        topics,
        tail=tail,
        batch_size=batch_size,
        raise_on_errors=False,
        add_config={"logger": client_logger(), **(add_config or {})},
    )
    return op.input("kafka_input", flow, source).then(_kafka_error_split, "split_err")
