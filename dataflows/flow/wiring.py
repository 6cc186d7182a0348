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
from collections.abc import Callable
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError
from bytewax.dataflow import Dataflow, Stream

from dataflows.broker import sink as kafka_sink
from dataflows.broker import source as kafka_source
from dataflows.broker.admin import require_topics
from dataflows.broker.offsets import LagProbe, end_offsets
from dataflows.broker.security import librdkafka_settings
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
    codec = Codec(
        topics.events, topics.labels, config.fields, config.flow.max_message_bytes, config.flow.max_clock_skew_ms
    )
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
    consumer_errors = op.map("describe_consumer_errors", errors, _consumer_error)

    kafka, security = config.bootstrap_servers, config.kafka_security
    ends = end_offsets(kafka, partitions, names, security) if kafka else None
    ordered = op.stateful_batch(
        OrderByEventTime.STEP,
        # Messages refused by the decoder go through it too: they were read, so their partition spoke and
        # its read position moved (a partition whose last start-up message is bad would otherwise seem to
        # have a backlog forever, never go idle, and hold the watermark back).
        op.key_on("key_by_shard", decoded, _shard),
        lambda resume: OrderByEventTime(
            config, input_partitions, ends, config.tail, resume, state_dir, SHARD, max(1, workers)
        ),
    )
    # The ordering step emits (destination key, message): a release for the learner, a batch per feature shard.
    routed = op.branch("split_releases", op.map("route", ordered, _destination), _is_release)
    features = op.stateful_batch(
        ComputeFeatures.STEP, routed.falses, lambda resume: ComputeFeatures(config, resume, state_dir)
    )
    rejected = op.key_on("key_dead_letters", consumer_errors, _shard)
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
