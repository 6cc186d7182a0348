"""Wires Kafka, the SQL features and the learner into one Bytewax dataflow.

    read_kafka -> decode -> order_by_event_time -+-> compute_features (a key per shard) -+-> score_and_learn -> write_*
                                                 +----------- releases, in order -------+

The ordering step and the learner run under one key (`SHARD`): one model learns from the whole stream in
one canonical order. The feature state is cut by entity into one key per shard of each feature family
(`dataflows.flow.shards`), as many shards as the flow has workers, so it spreads over them; the learner joins
the shards' features back onto the released events in order. Decoding, validation and output encoding are
stateless and spread over every worker.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError
from bytewax.dataflow import Dataflow, Stream
from confluent_kafka import Consumer, TopicPartition

from dataflows.broker import sink as kafka_sink
from dataflows.broker import source as kafka_source
from dataflows.broker.admin import require_topics
from dataflows.broker.client_logs import client_logger
from dataflows.broker.security import KafkaSecurity, librdkafka_settings
from dataflows.flow.codec import Codec, encode_alert, encode_dead_letter, encode_metrics, encode_prediction
from dataflows.flow.config import Config
from dataflows.flow.messages import Alert, DeadLetter, Metrics, Origin, Prediction, Release
from dataflows.flow.steps import ComputeFeatures, OrderByEventTime, ScoreAndLearn
from features import FeatureEngine

log = logging.getLogger("eddy")

FLOW_ID = "eddy"
SHARD = "eddy"
STATEFUL_STEPS = (OrderByEventTime.STEP, ComputeFeatures.STEP, ScoreAndLearn.STEP)
"""Renaming any of these (or FLOW_ID) makes Bytewax drop its saved state: `dataflows.flow.recovery` guards them."""


def check_inputs(config: Config) -> dict[str, int]:
    """Fail within seconds, with advice, when the broker or a topic is missing (Bytewax alone would hang)."""
    t = config.topics
    return require_topics(
        config.bootstrap_servers,
        [t.events, t.labels, t.predictions, t.metrics, t.dead_letters, t.alerts],
        security=config.kafka_security,
    )


Inputs = Callable[[Dataflow], tuple[Stream, Stream]]
Outputs = Callable[[str, Stream], None]


def build_flow(
    config: Config,
    partitions: dict[str, int] | None = None,
    inputs: Inputs | None = None,
    outputs: Outputs | None = None,
    state_dir: Path | None = None,
    workers: int = 1,
) -> Dataflow:
    """The dataflow for `config`; checks the broker and topics first unless `partitions` is given.

    `workers` is the flow's total worker count (`dataflows.flow.shards.workers_from_argv`): each feature family's
    state is cut into that many shards (or `[flow] feature_shards`). A recovery directory keeps the shard
    count and refuses another.

    `state_dir` is the recovery directory (`-r`) of a run that saves its state: the steps write their journal
    there (see `dataflows.flow.steps`). Without it they save nothing at the epochs' ends, where Bytewax would
    otherwise have them pickle their state and throw it away; a resume from such a run is refused.

    `inputs` and `outputs` replace Kafka (the backtest reads a file and writes files): `inputs(flow)` returns
    a stream of `KafkaSourceMessage`s and a stream of `KafkaError`s; `outputs(name, stream)` consumes the
    encoded `KafkaSinkMessage`s of `predictions`, `metrics`, `dead_letters` and `alerts`.
    """
    if partitions is None:
        partitions = check_inputs(config)
    FeatureEngine(config.sql_dir, config.fields)
    topics = config.topics
    names = [topics.events, topics.labels]
    input_partitions = [f"{topic}:{p}" for topic in names for p in range(partitions[topic])]
    brokers = config.bootstrap_servers.split(",")
    client_settings = librdkafka_settings(config.kafka_security)
    codec = Codec(topics.events, topics.labels, config.fields, config.flow.max_message_bytes)
    if inputs is None:

        def inputs(flow: Dataflow) -> tuple[Stream, Stream]:
            consumed = kafka_source.read(
                "read_kafka",
                flow,
                brokers=brokers,
                topics=names,
                tail=config.tail,
                batch_size=config.flow.batch_size,
                add_config=client_settings,
            )
            return consumed.oks, consumed.errs

    if outputs is None:
        destinations = {
            "predictions": topics.predictions,
            "metrics": topics.metrics,
            "dead_letters": topics.dead_letters,
            "alerts": topics.alerts,
        }

        def outputs(name: str, stream: Stream) -> None:
            kafka_sink.write(
                f"write_{name}",
                stream,
                brokers=brokers,
                topic=destinations[name],
                wait_s=config.flow.broker_wait_s,
                add_config=client_settings,
            )

    flow = Dataflow(FLOW_ID)
    messages, errors = inputs(flow)
    decoded = op.map("decode", messages, codec.decode)
    valid = op.branch("split_off_invalid", decoded, lambda m: not isinstance(m, DeadLetter))
    consumer_errors = op.map("describe_consumer_errors", errors, _consumer_error)

    kafka, security = config.bootstrap_servers, config.kafka_security
    ends = end_offsets(kafka, partitions, names, security) if kafka else None
    ordered = op.stateful_batch(
        OrderByEventTime.STEP,
        op.key_on("key_by_shard", valid.trues, _shard),
        lambda resume: OrderByEventTime(
            config, input_partitions, ends, config.tail, resume, state_dir, SHARD, max(1, workers)
        ),
    )
    # The ordering step emits (destination key, message): a release for the learner, a batch per feature shard.
    routed = op.branch("split_releases", op.map("route", ordered, _destination), _is_release)
    features = op.stateful_batch(
        ComputeFeatures.STEP, routed.falses, lambda resume: ComputeFeatures(config, resume, state_dir)
    )
    rejected = op.key_on("key_dead_letters", op.merge("gather_dead_letters", valid.falses, consumer_errors), _shard)
    probe = LagProbe(kafka, names, partitions, security=security) if kafka else None
    learned = op.stateful_batch(
        ScoreAndLearn.STEP,
        op.merge("join_features", routed.trues, op.map("key_parts", features, _to_learner), rejected),
        lambda resume: ScoreAndLearn(config, probe, resume, state_dir, SHARD),
    )
    results = op.key_rm("drop_shard_key", learned)

    for kind, encode, name in (
        (Prediction, encode_prediction, "predictions"),
        (Metrics, encode_metrics, "metrics"),
        (DeadLetter, encode_dead_letter, "dead_letters"),
        (Alert, encode_alert, "alerts"),
    ):
        chosen = op.filter(f"select_{name}", results, _is(kind))
        outputs(name, op.map(f"encode_{name}", chosen, encode))
    return flow


def _is(kind: type) -> Callable[[object], bool]:
    return lambda item: isinstance(item, kind)


def _shard(_item) -> str:
    return SHARD


def _destination(keyed: tuple[str, tuple[str, object]]) -> tuple[str, object]:
    return keyed[1]


def _is_release(keyed: tuple[str, object]) -> bool:
    return type(keyed[1]) is Release


def _to_learner(keyed: tuple[str, object]) -> tuple[str, object]:
    return SHARD, keyed[1]


def _consumer_error(error: KafkaError) -> DeadLetter:
    msg = error.msg
    origin = Origin(msg.topic or "", msg.partition or 0, msg.offset or 0)
    return DeadLetter(msg.value, msg.key, f"Kafka consumer error: {error.err}", "read", origin, "kafka_error")


def end_offsets(
    bootstrap_servers: str, partitions: dict[str, int], topics: list[str], security: KafkaSecurity | None = None
) -> dict[str, int]:
    """Each input partition's end offset now: where a run that does not tail will stop reading it."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "eddy-end-offsets",
            "logger": client_logger(),
            **librdkafka_settings(security),
        }
    )
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
    offsets cost a broker round trip per partition (2-7 ms under load), so the first call asks for them and
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
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap_servers,
                    "group.id": "eddy-lag-probe",
                    "enable.auto.commit": False,
                    "logger": client_logger(),
                    **librdkafka_settings(self.security),
                }
            )
        self._consumer.poll(0)  # serves the client's log lines (`dataflows.broker.client_logs`); it has no assignment
        return {
            (topic, p): self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=1.0)[1]
            for topic in self.topics
            for p in range(self.partitions.get(topic, 0))
        }
