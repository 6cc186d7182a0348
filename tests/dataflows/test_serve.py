"""The HTTP scoring gateway (`python -m dataflows.serve`) in front of the real flow, on the real broker, asked
with a real HTTP client (httpx).

- Replies match their requests under concurrency: 64 concurrent clients over two gateway processes side by
  side, each reply's event_id its request's, each score the one the flow published for that event.
- Bad input gets 400 with the codec's reason and sentence, the very ones a dead letter would carry; an
  oversized body 413; an event_id the flow has already scored 409 with the flow's dead-letter reason.
- Labels posted reach the labels topic; the registry, health, readiness and Prometheus routes answer.
- No flow answering: 504 after the timeout. The broker down (a broker of the test's own, stopped): 503 at
  once, in under a second.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from bytewax.connectors.kafka import KafkaSourceMessage

from dataflows.broker.admin import ensure_topics
from dataflows.flow.codec import Codec
from dataflows.flow.config import Topics, load_config
from tests.flowkit import REPO, by_id, flow_env, isolated_config, start_flow_logged, transactions_input
from tests.kafka_io import read_topic
from tests.own_broker import OwnBroker, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CLIENTS = 64


class GatewayProcess:
    """`python -m dataflows.serve` on a free port, with the test's topics and settings."""

    def __init__(self, env: dict[str, str], log: Path, **settings: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dataflows.serve", "--port", str(self.port)],
                env={**env, **settings},
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.log = log

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gateway exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gateway not ready in {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def served(kafka_bootstrap, tmp_path_factory) -> Iterator[dict]:
    """A tailing flow in arrival mode on fresh topics, and two gateways in front of it."""
    directory = tmp_path_factory.mktemp("serve")
    topics = _fresh_topics(kafka_bootstrap, "serve")
    config = isolated_config(directory)
    env = flow_env(topics, kafka_bootstrap, config, EDDY_MODE="arrival", EDDY_TAIL="true", EDDY_ENSEMBLE="false")
    flow = start_flow_logged(env, directory / "flow.log", "-s", "1")
    gateways = [GatewayProcess(env, directory / f"gateway{i}.log", EDDY_SERVE_TIMEOUT_S="60") for i in range(2)]
    try:
        for gateway in gateways:
            gateway.wait_ready()
        # The first request waits for the flow to start; later ones are answered at its pace.
        events, _ = _events(1, 101)
        reply = httpx.post(f"{gateways[0].url}/v1/score", json=events[0], timeout=90)
        assert reply.status_code == 200, reply.text
        yield {"topics": topics, "gateways": gateways, "env": env, "directory": directory}
    finally:
        for gateway in gateways:
            gateway.stop()
        flow.kill()
        flow.wait()


def _events(n: int, seed: int) -> tuple[list[dict], None]:
    """`n` transactions whose event_ids no other call of this module gives."""
    events, _ = transactions_input(n, seed=seed)
    return [{**event, "event_id": f"s{seed}-{event['event_id']}"} for event in events], None


def _fresh_topics(bootstrap: str, prefix: str, partitions: int = 3) -> Topics:
    import uuid

    suffix = uuid.uuid4().hex[:10]
    topics = Topics(
        *(f"{prefix}-{name}-{suffix}" for name in ("events", "labels", "predictions", "metrics", "dlq", "alerts"))
    )
    ensure_topics(bootstrap, topics.all(), partitions)
    return topics


def test_replies_match_their_requests_under_concurrency(served, kafka_bootstrap):
    events, _ = _events(CLIENTS * 5, 7)
    gateways = served["gateways"]

    async def client(i: int, http: httpx.AsyncClient) -> list[tuple[str, dict]]:
        out = []
        for event in events[i::CLIENTS]:
            reply = await http.post(f"{gateways[i % 2].url}/v1/score", json=event)
            assert reply.status_code == 200, reply.text
            out.append((event["event_id"], reply.json()))
        return out

    async def everyone() -> list[tuple[str, dict]]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(timeout=90, limits=limits) as http:
            done = await asyncio.gather(*(client(i, http) for i in range(CLIENTS)))
        return [pair for pairs in done for pair in pairs]

    replies = asyncio.run(everyone())
    assert len(replies) == len(events)
    assert [asked for asked, _ in replies if asked != _["event_id"]] == []
    published = by_id(orjson.loads(r.value) for r in read_topic(kafka_bootstrap, served["topics"].predictions))
    for asked, prediction in replies:
        assert prediction == published[asked]
        assert 0.0 <= prediction["score"] <= 1.0

    # A list is answered with a list, in its order.
    batch, _ = _events(10, 8)
    reply = httpx.post(f"{gateways[1].url}/v1/score", json=batch, timeout=90)
    assert reply.status_code == 200, reply.text
    assert [p["event_id"] for p in reply.json()] == [e["event_id"] for e in batch]


def _codec_refusal(event: dict | bytes) -> tuple[str, str]:
    """(reason, error) the flow's codec gives the event: what a dead letter would carry."""
    config = load_config(env={})
    codec = Codec("events", "labels", config.fields, config.flow.max_message_bytes, config.flow.max_clock_skew_ms)
    raw = event if isinstance(event, bytes) else orjson.dumps(event)
    letter = codec.decode(KafkaSourceMessage(key=None, value=raw, topic="events", partition=0, offset=0))
    return letter.reason, letter.error


def test_bad_input_gets_400_with_the_dead_letter_reason(served):
    url = served["gateways"][0].url
    (good,), _ = _events(1, 9)
    bad = [
        {k: v for k, v in good.items() if k != "amount"},
        {**good, "amount": "twelve"},
        {**good, "ts": "yesterday"},
        {**good, "event_id": 17},
        {**good, "label": "maybe"},
        "an event",
    ]
    for event in bad:
        reply = httpx.post(f"{url}/v1/score", json=event, timeout=30)
        reason, error = _codec_refusal(event if isinstance(event, dict) else orjson.dumps(event))
        assert (reply.status_code, reply.json()["reason"], reply.json()["error"]) == (400, reason, error), event
    reply = httpx.post(f"{url}/v1/score", content=b'{"event_id": "x", "amount": NaN}', timeout=30)
    assert (reply.status_code, reply.json()["reason"]) == (400, "not_finite")
    reply = httpx.post(f"{url}/v1/score", content=b"{not json", timeout=30)
    assert (reply.status_code, reply.json()["reason"]) == (400, "not_json")

    # In a list, the first bad item is named; nothing of the list is published.
    reply = httpx.post(f"{url}/v1/score", json=[1, 2], timeout=30)
    assert (reply.status_code, reply.json()["index"], reply.json()["reason"]) == (400, 0, "not_object")
    (other,), _ = _events(1, 10)
    reply = httpx.post(f"{url}/v1/score", json=[other, {**good, "amount": "twelve"}], timeout=30)
    assert (reply.status_code, reply.json()["index"], reply.json()["reason"]) == (400, 1, "wrong_type")
    reply = httpx.post(f"{url}/v1/score", json=[good, good], timeout=30)
    assert (reply.status_code, reply.json()["reason"]) == (400, "duplicate")

    # A body over the limit is refused as it streams; labels go through the same codec.
    reply = httpx.post(f"{url}/v1/score", content=b" " * 2_000_000, timeout=30)
    assert reply.status_code == 413, reply.text
    reply = httpx.post(f"{url}/v1/labels", json={"event_id": "e1"}, timeout=30)
    assert (reply.status_code, reply.json()["reason"]) == (400, "missing_field")


def test_an_event_id_already_scored_gets_409_with_the_flows_reason(served):
    url = served["gateways"][0].url
    (event,), _ = _events(1, 11)
    first = httpx.post(f"{url}/v1/score", json=event, timeout=90)
    assert first.status_code == 200, first.text
    again = httpx.post(f"{url}/v1/score", json=event, timeout=90)
    refusal = again.json()
    assert (again.status_code, refusal["reason"], refusal["event_id"]) == (409, "duplicate", event["event_id"])


def test_labels_models_health_and_metrics(served, kafka_bootstrap):
    gateway = served["gateways"][1]
    labels = [{"event_id": f"label-{i}", "label": i % 2 == 0, "ts": 1_700_000_000_000 + i} for i in range(5)]
    reply = httpx.post(f"{gateway.url}/v1/labels", json=labels, timeout=30)
    assert (reply.status_code, reply.json()) == (202, {"accepted": 5})
    on_topic = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, served["topics"].labels)]
    assert sorted(on_topic, key=lambda m: m["event_id"]) == labels

    models = httpx.get(f"{gateway.url}/v1/models", timeout=30).json()
    assert models["registry_dir"] == str(served["directory"] / "registry")
    assert httpx.get(f"{gateway.url}/healthz", timeout=30).json() == {"status": "ok"}
    assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 200
    text = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    assert 'eddy_serve_requests_total{route="labels",status="202"} 1.0' in text
    assert "eddy_serve_broker_up 1.0" in text


def test_no_flow_answering_gets_504_after_the_timeout(kafka_bootstrap, tmp_path):
    topics = _fresh_topics(kafka_bootstrap, "serve504", partitions=1)
    env = flow_env(topics, kafka_bootstrap, isolated_config(tmp_path))
    gateway = GatewayProcess(env, tmp_path / "gateway.log", EDDY_SERVE_TIMEOUT_S="1")
    try:
        gateway.wait_ready()
        (event,), _ = _events(1, 12)
        reply = httpx.post(f"{gateway.url}/v1/score", json=event, timeout=30)
        assert reply.status_code == 504, reply.text
        assert "did not come within 1 s" in reply.json()["error"]
    finally:
        gateway.stop()


def test_broker_down_gets_503_in_under_a_second(tmp_path):
    broker = OwnBroker(tmp_path / "kafka")
    broker.up()
    try:
        topics = _fresh_topics(broker.bootstrap, "serve503", partitions=1)
        env = flow_env(topics, broker.bootstrap, isolated_config(tmp_path))
        gateway = GatewayProcess(env, tmp_path / "gateway.log", EDDY_SERVE_TIMEOUT_S="30")
        try:
            gateway.wait_ready()
            broker.down()
            (event,), _ = _events(1, 13)
            # The first request after the broker went may find the gateway not yet told; it is answered 503
            # when the gateway notices (its probe), far inside the 30 s timeout. Once noticed, at once.
            reply = httpx.post(f"{gateway.url}/v1/score", json=event, timeout=60)
            assert reply.status_code == 503, reply.text
            started = time.monotonic()
            reply = httpx.post(f"{gateway.url}/v1/score", json=event, timeout=60)
            elapsed = time.monotonic() - started
            assert reply.status_code == 503, reply.text
            assert "unreachable" in reply.json()["error"]
            assert elapsed < 1.0
            assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 503
        finally:
            gateway.stop()
    finally:
        broker.down()


def test_serve_help():
    out = subprocess.run(
        [sys.executable, "-m", "dataflows.serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=60,
    )
    assert out.returncode == 0 and "POST /v1/score" in out.stdout


def test_the_models_route_lists_the_newest_runs_refits_and_checkpoints(tmp_path):
    from dataclasses import replace

    from dataflows.tools.serve import registry_listing
    from models.checkpoints import RiverCheckpoints, flush_writes
    from models.pipelines import make_model

    registry = tmp_path / "registry"
    older, newer = registry / "20261201T000000Z-aaaaaa", registry / "20261202T000000Z-bbbbbb"
    for run, versions in ((older, (1,)), (newer, (1, 2))):
        run.mkdir(parents=True)
        for v in versions:
            (run / f"v{v:06d}.json").write_text(orjson.dumps({"version": v, "accepted": v == 2}).decode())
    model, checkpoints = make_model(), RiverCheckpoints(newer / "checkpoints", every=1)
    checkpoints.observe(model, 0, "abc")
    model.learn_one({"a": 1.0}, True)
    checkpoints.observe(model, 1, "abc")
    flush_writes()
    config = load_config(env={})
    listing = registry_listing(replace(config, ensemble={**config.ensemble, "registry_dir": str(registry)}))
    assert listing["run"] == newer.name
    assert listing["refits"] == [{"version": 1, "accepted": False}, {"version": 2, "accepted": True}]
    assert [(c["labels"], c["features_version"]) for c in listing["checkpoints"]] == [(1, "abc")]
