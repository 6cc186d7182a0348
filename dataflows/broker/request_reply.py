"""Kafka request/reply for the HTTP gateway (`dataflows.tools.serve`): events published to the events topic,
each request woken by its reply on the predictions topic (or by the flow's dead letter of its event).

Each `RequestReply` reads every partition of the predictions and dead-letters topics (assigned, no consumer
group, from their ends when it starts) and wakes the request waiting for an `event_id`; ids it does not wait
for are another gateway's and are skipped, so several gateways run side by side, each seeing all replies.
Nothing waits without bound: the requests waiting are capped (`Busy`), and when the broker is found
unreachable (a metadata probe every `PROBE_S`, and librdkafka's report that every broker is down) every
request waiting fails at once with `Unreachable`. A message not delivered within the request timeout is
dropped by the producer, so an event whose request gave up is never scored afterwards by surprise.

What went wrong is told by the exception's type, which the HTTP side turns into a status; `extra` holds what
its answer names besides the message (the codec's `reason`, the `event_id`, the `index` in a list).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSourceMessage
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from dataflows.broker.client_logs import client_logger
from dataflows.broker.security import librdkafka_settings
from dataflows.flow.codec import Codec
from dataflows.flow.config import Config
from dataflows.flow.messages import DeadLetter

log = logging.getLogger("eddy")

PROBE_S = 0.5
"""How often the broker is asked for metadata, and how long an answer is awaited."""


class ReplyError(Exception):
    """A request that cannot be answered with its reply; `extra` is what the answer names besides the message."""

    def __init__(self, message: str, **extra: Any):
        super().__init__(message)
        self.extra = extra


class InvalidMessage(ReplyError):
    """The codec refused an event or label (`extra`: its `reason`, and the `index` in a list)."""


class AlreadyWaiting(ReplyError):
    """A request for this `event_id` is already waiting."""


class RefusedByFlow(ReplyError):
    """The flow dead-lettered the event (`extra`: the dead letter's `reason`, the `event_id`)."""


class Busy(ReplyError):
    """Too many events wait, or the producer's queue is full: retry shortly."""


class Unreachable(ReplyError):
    """The broker cannot be reached, or the replies are not read yet."""


@dataclass
class _Waiting:
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class Replies:
    """Requests waiting for their replies by `event_id`, bounded, woken from the reader thread."""

    def __init__(self, limit: int):
        self.limit = limit
        self._waiting: dict[str, _Waiting] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, event_ids: list[str]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        with self._lock:
            taken = [eid for eid in event_ids if eid in self._waiting]
            if taken:
                raise AlreadyWaiting(f"event_id {taken[0]!r} is already waiting for its prediction", event_id=taken[0])
            if len(self._waiting) + len(event_ids) > self.limit:
                raise Busy(f"{len(self._waiting)} events wait for their predictions, the limit is {self.limit}")
            futures = []
            for eid in event_ids:
                future = loop.create_future()
                self._waiting[eid] = _Waiting(future, loop)
                futures.append(future)
        return futures

    def forget(self, event_ids: list[str]) -> None:
        with self._lock:
            for eid in event_ids:
                self._waiting.pop(eid, None)

    def answer(self, event_id: str, outcome: dict | ReplyError) -> bool:
        """Wake the request waiting for `event_id` (from any thread); False if none waits (another gateway's)."""
        with self._lock:
            waiting = self._waiting.pop(event_id, None)
        if waiting is None:
            return False
        waiting.loop.call_soon_threadsafe(_settle, waiting.future, outcome)
        return True

    def fail_all(self, refusal: ReplyError) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for entry in waiting.values():
            entry.loop.call_soon_threadsafe(_settle, entry.future, refusal)


def _settle(future: asyncio.Future, outcome: dict | ReplyError) -> None:
    if future.done():
        return
    if isinstance(outcome, ReplyError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class RequestReply:
    """Events published and their replies awaited: a producer, a reader of the replies and a broker probe, on
    threads; `publish` and `Replies.expect` from the event loop."""

    def __init__(self, config: Config):
        self.config = config
        self.settings = config.serve
        topics = config.topics
        self.codec = Codec(
            topics.events, topics.labels, config.fields, config.flow.max_message_bytes, config.flow.max_clock_skew_ms
        )
        self.replies = Replies(self.settings.max_waiting)
        self.broker_up = False
        self.reading = False
        self.broker_error = "not yet reached"
        self._stop = threading.Event()
        common = {
            "bootstrap.servers": config.bootstrap_servers,
            "logger": client_logger(),
            "error_cb": self._client_error,
            **librdkafka_settings(config.kafka_security),
        }
        # A message not delivered by the time its request gives up is dropped, not scored after the 504.
        timeout_ms = max(1, int(self.settings.timeout_s * 1000))
        self.producer = Producer({**common, "linger.ms": 1, "message.timeout.ms": timeout_ms})
        self.consumer = Consumer(
            {
                **common,
                "group.id": f"eddy-request-reply-{uuid.uuid4().hex}",  # required by librdkafka; assign() joins no group
                "enable.auto.commit": False,
                # The broker answers a fetch as soon as a reply arrives; this bounds only idle fetches.
                "fetch.wait.max.ms": 100,
                "fetch.error.backoff.ms": 50,
            }
        )
        self._threads = [
            threading.Thread(target=self._probe_loop, name="eddy-serve-probe", daemon=True),
            threading.Thread(target=self._read_loop, name="eddy-serve-replies", daemon=True),
            threading.Thread(target=self._deliver_loop, name="eddy-serve-deliveries", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.replies.fail_all(Unreachable("the gateway is shutting down"))
        self.producer.flush(1.0)
        self.consumer.close()

    # -- the broker's health ---------------------------------------------------------------------------

    def _client_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down(f"every broker is down ({error.str()})")

    def _down(self, why: str) -> None:
        if self.broker_up:
            log.warning("serve: Kafka broker at %s unreachable: %s", self.config.bootstrap_servers, why)
        self.broker_up, self.broker_error = False, why
        self.replies.fail_all(self._unreachable())

    def _unreachable(self) -> Unreachable:
        return Unreachable(f"the Kafka broker at {self.config.bootstrap_servers} is unreachable: {self.broker_error}")

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.producer.list_topics(self.config.topics.events, timeout=PROBE_S)
            except KafkaException as exc:
                self._down(str(exc.args[0].str() if exc.args else exc))
            else:
                if not self.broker_up:
                    log.info("serve: Kafka broker at %s reachable", self.config.bootstrap_servers)
                self.broker_up = True
            self._stop.wait(max(0.0, PROBE_S - (time.monotonic() - started)))

    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    # -- replies ---------------------------------------------------------------------------------------

    def _assign_at_ends(self) -> bool:
        """Read every partition of the predictions and dead-letters topics from their current ends: a reply to
        anything published from now on is read. False while the broker cannot say where the ends are."""
        partitions = []
        try:
            for topic in (self.config.topics.predictions, self.config.topics.dead_letters):
                meta = self.consumer.list_topics(topic, timeout=PROBE_S).topics[topic]
                if meta.error is not None:
                    raise KafkaException(meta.error)
                for p in sorted(meta.partitions):
                    _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=PROBE_S)
                    partitions.append(TopicPartition(topic, p, high if high >= 0 else OFFSET_END))
        except KafkaException as exc:
            self.broker_error = f"cannot read the reply topics: {exc}"
            return False
        self.consumer.assign(partitions)
        log.info(
            "serve: reading replies from '%s' and '%s' (%d partitions)",
            self.config.topics.predictions,
            self.config.topics.dead_letters,
            len(partitions),
        )
        return True

    def _read_loop(self) -> None:
        while not self._stop.is_set() and not self.reading:
            if self._assign_at_ends():
                self.reading = True
            else:
                self._stop.wait(PROBE_S)
        dead_letters = self.config.topics.dead_letters
        while not self._stop.is_set():
            # `poll` wakes at the first reply (`consume` would wait out its timeout for a full batch), then
            # `consume` without waiting takes what has come with it.
            first = self.consumer.poll(0.1)
            if first is None:
                continue
            for message in [first, *self.consumer.consume(1000, 0)]:
                if message.error() is not None:
                    continue
                if message.topic() == dead_letters:
                    self._dead_letter(message)
                else:
                    self._prediction(message.value())

    def _prediction(self, value: bytes | None) -> None:
        try:
            prediction = orjson.loads(value)
            event_id = prediction["event_id"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return
        if isinstance(event_id, str):
            self.replies.answer(event_id, prediction)

    def _dead_letter(self, message: Any) -> None:
        key = message.key()
        if not key:
            return
        headers = {name: (value or b"").decode(errors="replace") for name, value in message.headers() or []}
        if headers.get("source_topic") != self.config.topics.events:
            return  # a label refused under the same key: the event itself may still be scored
        event_id = key.decode(errors="replace")
        refusal = RefusedByFlow(
            headers.get("error", "refused by the flow"), reason=headers.get("reason"), event_id=event_id
        )
        self.replies.answer(event_id, refusal)

    # -- requests --------------------------------------------------------------------------------------

    def check_ready(self) -> None:
        if not self.broker_up:
            raise self._unreachable()
        if not self.reading:
            raise Unreachable(f"not reading replies yet: {self.broker_error}")

    def validate(self, items: list[bytes], topic: str) -> list[Any]:
        """Each item decoded by the flow's codec, or 400 naming the first refused one and the reason."""
        decoded = []
        for index, raw in enumerate(items):
            msg = KafkaSourceMessage(key=None, value=raw, topic=topic, partition=0, offset=0)
            result = self.codec.decode(msg)
            if isinstance(result, DeadLetter):
                where = {"index": index} if len(items) > 1 else {}
                raise InvalidMessage(result.error, reason=result.reason, **where)
            decoded.append(result)
        return decoded

    def publish(self, topic: str, items: list[tuple[str, bytes]]) -> list[asyncio.Future]:
        """Hand each (event_id, value) to the producer; futures that fail if the broker refuses them."""
        loop = asyncio.get_running_loop()
        deliveries = []
        for event_id, value in items:
            delivered = loop.create_future()
            deliveries.append(delivered)

            def report(error: KafkaError | None, _msg: Any, delivered: asyncio.Future = delivered) -> None:
                outcome = {} if error is None else Unreachable(f"the broker did not take the message: {error.str()}")
                loop.call_soon_threadsafe(_settle, delivered, outcome)

            try:
                self.producer.produce(topic, value, event_id.encode(), on_delivery=report)
            except BufferError:
                raise Busy("the Kafka producer's queue is full; retry shortly") from None
            except KafkaException as exc:
                raise Unreachable(f"cannot publish to '{topic}': {exc}") from None
        return deliveries
