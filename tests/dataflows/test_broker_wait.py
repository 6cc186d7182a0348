"""The bounded wait for an unreachable broker, the tamed librdkafka log, and their settings (no broker needed)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from bytewax.connectors.kafka import KafkaSinkMessage

from dataflows.broker.client_logs import LOGGER, _OncePerKind
from dataflows.broker.sink import BrokerUnreachable, EpochFlushKafkaSink
from dataflows.flow.config import ConfigError, FlowSettings, load_config


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_epoch_end_waits_for_an_unreachable_broker_no_longer_than_the_bound(caplog):
    brokers = [f"localhost:{_unused_port()}"]  # nothing listens there
    sink = EpochFlushKafkaSink(brokers, "predictions", wait_s=2.5)
    part = sink.build_part("write_predictions", "predictions", None)
    part.write_batch([KafkaSinkMessage(key=None, value=b"v%d" % i) for i in range(3)])
    with caplog.at_level(logging.INFO), pytest.raises(BrokerUnreachable) as raised:
        part.snapshot()
    message = str(raised.value)
    assert f"the Kafka broker at {brokers[0]} has not taken 3 message(s) for topic 'predictions'" in message
    assert "within 2.5 s ([flow] broker_wait_s, EDDY_BROKER_WAIT_S)" in message
    assert "same recovery directory" in message
    said = [r.getMessage() for r in caplog.records if r.name == "eddy"]
    assert len(said) == 1 and "unreachable: 3 message(s) for 'predictions' not acknowledged" in said[0], said
    # librdkafka's lines come through Python logging, each kind once (a connection attempt every few ms).
    kafka_lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert kafka_lines and len(kafka_lines) == len(set(kafka_lines)) <= 10, kafka_lines


def _librdkafka_record(client: str, text: str) -> logging.LogRecord:
    """A record as confluent-kafka makes it from a librdkafka log line."""
    return logging.LogRecord(LOGGER, logging.ERROR, __file__, 0, "%s [%s] %s", ("FAIL", client, text), None)


def test_a_librdkafka_line_of_each_kind_passes_once_then_one_with_the_count_held_back():
    once = _OncePerKind(every_s=3600)
    refused = "localhost:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after {}ms)"
    passed = [once.filter(_librdkafka_record(f"rdkafka#consumer-{i}", refused.format(i))) for i in range(100)]
    assert passed == [True] + [False] * 99
    assert once.filter(_librdkafka_record("rdkafka#producer-1", "localhost:9092/1: Disconnected"))
    once.every_s = 0  # the period has passed
    record = _librdkafka_record("rdkafka#consumer-1", refused.format(7))
    assert once.filter(record)
    assert "(99 more like it in the last" in record.getMessage()


def test_broker_wait_and_start_over_settings(tmp_path: Path):
    assert FlowSettings().broker_wait_s == 120.0 and FlowSettings().start_over is False
    defaults = load_config(env={}).flow
    assert defaults.broker_wait_s == 120.0 and defaults.start_over is False
    path = tmp_path / "eddy.toml"
    path.write_text("[flow]\nbroker_wait_s = 30\nstart_over = true\n")
    assert load_config(path, env={}).flow.broker_wait_s == 30.0
    assert load_config(path, env={}).flow.start_over is True
    overridden = load_config(path, env={"EDDY_BROKER_WAIT_S": "7.5", "EDDY_START_OVER": "false"}).flow
    assert overridden.broker_wait_s == 7.5 and overridden.start_over is False


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("", {"EDDY_BROKER_WAIT_S": "soon"}, "EDDY_BROKER_WAIT_S='soon' is not a number of seconds > 0"),
        ("", {"EDDY_BROKER_WAIT_S": "0"}, "EDDY_BROKER_WAIT_S='0' is not a number of seconds > 0"),
        ("", {"EDDY_START_OVER": "please"}, "EDDY_START_OVER='please' is not a boolean"),
        ("[flow]\nbroker_wait_s = -1\n", {}, r"\[flow\] broker_wait_s must be a number > 0"),
        ("[flow]\nstart_over = 'yes'\n", {}, r"\[flow\] start_over must be true or false"),
    ],
)
def test_bad_broker_settings_are_named(tmp_path: Path, text: str, env: dict[str, str], message: str):
    path = tmp_path / "eddy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env=env)
