"""Offsets of the flow's input and output topics, read with confluent-kafka (librdkafka), the client the flow's
hot path uses through Bytewax's Kafka connectors: the end offsets a bounded run stops at, the consumer lag
the metrics report, and how many messages a topic holds."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, TopicPartition

from dataflows.broker.client_logs import client_logger
from dataflows.broker.security import KafkaSecurity, librdkafka_settings

if TYPE_CHECKING:
    from dataflows.flow.messages import Origin

log = logging.getLogger("eddy")


def offsets_consumer(bootstrap_servers: str, group_id: str, security: KafkaSecurity | None = None) -> Consumer:
    """A consumer that only asks for offsets: it joins no group and commits nothing."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "logger": client_logger(),
            **librdkafka_settings(security),
        }
    )


def end_offsets(
    bootstrap_servers: str, partitions: dict[str, int], topics: list[str], security: KafkaSecurity | None = None
) -> dict[str, int]:
    """Each input partition's end offset now: where a run that does not tail will stop reading it."""
    consumer = offsets_consumer(bootstrap_servers, "eddy-end-offsets", security)
    try:
        return {
            f"{topic}:{p}": consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)[1]
            for topic in topics
            for p in range(partitions[topic])
        }
    finally:
        consumer.close()


class LagProbe:
    """Consumer lag per input topic: the partitions' end offsets minus what this run has read.

    Reads Bytewax's own positions indirectly: the learner step hands it the offsets it has seen. The end
    offsets cost a broker round trip per partition, so the first call asks for them and
    a background thread then refreshes them every `refresh_s` seconds: a metrics report, on the learner's
    thread, never waits for the broker. The positions are always the latest. `refresh_s=0` asks at every call.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: list[str],
        partitions: dict[str, int],
        refresh_s: float = 1.0,
        security: KafkaSecurity | None = None,
    ):
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self.topics = topics
        self.partitions = partitions
        self.refresh_s = refresh_s
        self.positions: dict[tuple[str, int], int] = {}
        self._consumer: Consumer | None = None
        self._ends: dict[tuple[str, int], int] | None = None
        self._refresher: threading.Thread | None = None

    def seen(self, origin: Origin) -> None:
        key = (origin.topic, origin.partition)
        if origin.offset >= self.positions.get(key, -1):
            self.positions[key] = origin.offset

    def __call__(self) -> dict[str, int] | None:
        try:
            if self._ends is None or self.refresh_s <= 0:
                self._ends = self._end_offsets()
            if self._refresher is None and self.refresh_s > 0:
                self._refresher = threading.Thread(
                    target=self._refresh, args=(weakref.ref(self),), name="eddy-lag-probe", daemon=True
                )
                self._refresher.start()
            ends = self._ends
            return {
                topic: sum(
                    max(0, ends[topic, p] - (self.positions.get((topic, p), -1) + 1))
                    for p in range(self.partitions.get(topic, 0))
                )
                for topic in self.topics
            }
        except Exception as exc:
            log.warning("could not measure consumer lag: %s", exc)
            return None

    @staticmethod
    def _refresh(probe_ref: weakref.ref[LagProbe]) -> None:
        """The background thread: new end offsets every `refresh_s` while the probe lives; a failure keeps the
        last ones, logged once."""
        failing = False
        while (probe := probe_ref()) is not None:
            refresh_s = probe.refresh_s
            del probe  # hold no reference while asleep, so that a dropped probe ends its thread
            time.sleep(refresh_s)
            if (probe := probe_ref()) is None:
                return
            try:
                probe._ends = probe._end_offsets()
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("could not refresh the input topics' end offsets (consumer lag): %s", exc)
                failing = True

    def _end_offsets(self) -> dict[tuple[str, int], int]:
        if self._consumer is None:
            self._consumer = offsets_consumer(self.bootstrap_servers, "eddy-lag-probe", self.security)
        self._consumer.poll(0)  # serves the client's log lines (`dataflows.broker.client_logs`); it has no assignment
        return {
            (topic, p): self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=1.0)[1]
            for topic in self.topics
            for p in range(self.partitions.get(topic, 0))
        }


def message_count(
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    timeout_s: float = 10.0,
    security: KafkaSecurity | None = None,
) -> int:
    """Messages the topic holds now (end minus start offset, over its partitions)."""
    consumer = offsets_consumer(bootstrap_servers, "eddy-fresh-start", security)
    try:
        total = 0
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            total += max(0, high - low)
        return total
    finally:
        consumer.close()
