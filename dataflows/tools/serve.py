"""The HTTP scoring gateway: `python -m dataflows.serve` (or `task serve`).

`POST /v1/score` takes one event (a JSON object) or a list of them, validates each with the flow's own codec
(`dataflows.flow.codec`: a refused event gets 400 with the reason a dead letter would carry), publishes it to
the events topic and answers with its prediction, read from the predictions topic and matched by `event_id`.
The flow stays the one place that scores and learns: the gateway is Kafka request/reply in front of it.
`POST /v1/labels` publishes labels (202 once the broker has them). `GET /v1/models` lists the registry's
refits and River checkpoints of the newest run; `/healthz` (the process answers), `/readyz` (the broker is
reachable and the replies are being read) and `/metrics` (Prometheus).

Why Starlette on uvicorn: the gateway needs routing, a streamed request body and an ASGI server, and no more.
FastAPI would bring pydantic models for the bodies, a second validator beside the codec, whose reasons must
be the dead letters' own; Starlette is the layer FastAPI itself is built on.

How a reply finds its request, and how several gateways share the replies: `dataflows.broker.request_reply`.
A dead letter of an event the gateway published (a duplicate `event_id`, say) answers its request 409 with
the flow's reason at once.

Never a hang: a request waits at most `[serve] timeout_s` (504); when the broker is unreachable requests are
answered 503 at once, and those waiting are answered 503 when it is noticed. A slow or large client cannot
hold memory: a body over `max_body_bytes` is refused (413) as it streams, a body not sent within the timeout
gets 408, connections are capped (uvicorn's `limit_concurrency`, 503 past it) and so are the events waiting
(`max_waiting`, 503).

Which flow suits serving: arrival mode (`EDDY_MODE=arrival`). Event-time mode holds every event until the
watermark passes it (`lateness_ms`), which a request would wait out (README, Serving).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PrometheusCounter
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dataflows.broker.request_reply import (
    AlreadyWaiting,
    Busy,
    InvalidMessage,
    RefusedByFlow,
    ReplyError,
    RequestReply,
    Unreachable,
)
from dataflows.flow.config import Config, ConfigError, load_config
from dataflows.flow.logs import configure_logging
from dataflows.flow.runs import latest_run_dir
from models.checkpoints import list_checkpoints

log = logging.getLogger("eddy")


class Refused(Exception):
    """A request answered with an error: its HTTP status and a body saying why."""

    def __init__(self, status: int, error: str, **extra: Any):
        super().__init__(error)
        self.status, self.body = status, {"error": error, **extra}


STATUS = {InvalidMessage: 400, AlreadyWaiting: 409, RefusedByFlow: 409, Busy: 503, Unreachable: 503}
"""The HTTP status of each way a request can fail on the Kafka side."""


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = PrometheusCounter(
            "eddy_serve_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "eddy_serve_request_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.refused = PrometheusCounter(
            "eddy_serve_refused_events",
            "Events and labels refused by the codec, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.waiting = Gauge(
            "eddy_serve_waiting_events", "Events waiting for their predictions", registry=self.registry
        )
        self.broker_up = Gauge("eddy_serve_broker_up", "1 while the Kafka broker is reachable", registry=self.registry)


async def _body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (413) or takes longer than `timeout_s` (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body of {declared} bytes is over the limit of {limit} ([serve] max_body_bytes)")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Refused(413, f"the body is over the limit of {limit} bytes ([serve] max_body_bytes)")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f"the body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise Refused(400, "the client went away before sending its body") from None
    return b"".join(chunks)


def _items(body: bytes, max_events: int) -> tuple[list[bytes], bool]:
    """The body as one JSON value per event (the body itself for a single object): (items, was it a list)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [body], False  # the codec says what is wrong with it
    if not isinstance(value, list):
        return [body], False
    if not value:
        raise Refused(400, "an empty list of events", reason="empty")
    if len(value) > max_events:
        raise Refused(400, f"{len(value)} events in one request, the limit is {max_events} ([serve] max_events)")
    return [orjson.dumps(item) for item in value], True


def build_app(gateway: RequestReply, metrics: _Metrics | None = None) -> Starlette:
    settings = gateway.settings
    metrics = metrics or _Metrics()

    def answered(route: str):
        def wrap(handler):
            async def endpoint(request: Request) -> Response:
                started = time.perf_counter()
                try:
                    response = await handler(request)
                except Refused as refusal:
                    response = JSONResponse(refusal.body, status_code=refusal.status)
                except ReplyError as error:
                    if isinstance(error, InvalidMessage):
                        metrics.refused.labels(error.extra.get("reason", "invalid")).inc()
                    body = {"error": str(error), **error.extra}
                    response = JSONResponse(body, status_code=STATUS[type(error)])
                metrics.requests.labels(route, str(response.status_code)).inc()
                metrics.latency.labels(route).observe(time.perf_counter() - started)
                return response

            return endpoint

        return wrap

    async def validated(request: Request, topic: str) -> tuple[list[bytes], bool, list[Any]]:
        """The request's items (one JSON value each), whether it sent a list, and each decoded by the codec."""
        gateway.check_ready()
        body = await _body(request, settings.max_body_bytes, settings.timeout_s)
        items, many = _items(body, settings.max_events)
        return items, many, gateway.validate(items, topic)

    @answered("score")
    async def score(request: Request) -> Response:
        items, many, events = await validated(request, gateway.config.topics.events)
        ids = [event.event_id for event in events]
        if len(set(ids)) < len(ids):
            duplicate = next(eid for eid, n in Counter(ids).items() if n > 1)
            raise Refused(400, f"event_id {duplicate!r} appears twice in the request", reason="duplicate")
        replies = gateway.replies.expect(ids)
        try:
            # The broker may have been found down since `check_ready`, after the waiting requests were failed.
            gateway.check_ready()
            deliveries = gateway.publish(gateway.config.topics.events, list(zip(ids, items, strict=True)))
            async with asyncio.timeout(settings.timeout_s):
                await _first_failure(deliveries, replies)
                predictions = await asyncio.gather(*replies)
        except TimeoutError:
            waiting = sum(not f.done() for f in replies)
            raise Refused(
                504,
                f"{waiting} of {len(ids)} prediction(s) did not come within {settings.timeout_s:g} s "
                "([serve] timeout_s): is the flow running, in arrival mode?",
            ) from None
        finally:
            gateway.replies.forget(ids)
            for future in replies:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved, so that asyncio does not log it
        return JSONResponse(predictions if many else predictions[0])

    @answered("labels")
    async def labels(request: Request) -> Response:
        items, _, decoded = await validated(request, gateway.config.topics.labels)
        deliveries = gateway.publish(
            gateway.config.topics.labels, [(d.event_id, raw) for d, raw in zip(decoded, items, strict=True)]
        )
        try:
            async with asyncio.timeout(settings.timeout_s):
                await asyncio.gather(*deliveries)
        except TimeoutError:
            raise Refused(504, f"the broker did not take the label(s) within {settings.timeout_s:g} s") from None
        return JSONResponse({"accepted": len(decoded)}, status_code=202)

    @answered("models")
    async def models(request: Request) -> Response:
        return JSONResponse(registry_listing(gateway.config))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @answered("readyz")
    async def readyz(request: Request) -> Response:
        gateway.check_ready()
        return JSONResponse({"status": "ready"})

    async def prometheus(request: Request) -> Response:
        metrics.waiting.set(len(gateway.replies))
        metrics.broker_up.set(1 if gateway.broker_up else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/v1/score", score, methods=["POST"]),
            Route("/v1/labels", labels, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
    )


async def _first_failure(deliveries: list[asyncio.Future], replies: list[asyncio.Future]) -> None:
    """Raise the first delivery or reply failure as soon as it happens; return once every reply is in."""
    pending = set(deliveries) | set(replies)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                raise future.exception()
        if all(f.done() for f in replies):
            return


def registry_listing(config: Config) -> dict[str, Any]:
    """The newest run's refits (metadata, oldest first) and River checkpoints, as `GET /v1/models` shows them."""
    registry_dir = Path(config.ensemble["registry_dir"])
    run_dir = latest_run_dir(registry_dir)
    if run_dir is None:
        return {"registry_dir": str(registry_dir), "run": None, "refits": [], "checkpoints": []}
    refits = []
    for path in sorted(run_dir.glob("v*.json")):
        try:
            refits.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            continue  # pruned or half-written while we looked
    return {
        "registry_dir": str(registry_dir),
        "run": run_dir.name,
        "refits": refits,
        "checkpoints": [c.meta for c in list_checkpoints(run_dir)],
    }


def serve(config: Config) -> None:
    """Run the gateway until interrupted."""
    import uvicorn

    gateway = RequestReply(config)
    gateway.start()
    settings = config.serve
    try:
        uvicorn.run(
            build_app(gateway),
            host=settings.host,
            port=settings.port,
            limit_concurrency=settings.max_connections,
            timeout_keep_alive=5,
            log_level="warning",
            access_log=False,
        )
    finally:
        gateway.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataflows.serve",
        description="HTTP scoring gateway: POST /v1/score publishes events to the events topic and answers with "
        "their predictions from the predictions topic (run the flow in arrival mode); POST /v1/labels, "
        "GET /v1/models, /healthz, /readyz, /metrics. Settings: [serve] in eddy.toml.",
    )
    parser.add_argument("--host", help="address to listen on ([serve] host, EDDY_SERVE_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on ([serve] port, EDDY_SERVE_PORT; default 8080)")
    parser.add_argument(
        "--timeout", type=float, help="seconds a request waits for its prediction ([serve] timeout_s; default 2)"
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = load_config()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    overrides = {"host": args.host, "port": args.port, "timeout_s": args.timeout}
    config = replace(config, serve=replace(config.serve, **{k: v for k, v in overrides.items() if v is not None}))
    if config.flow.mode != "arrival":
        log.warning(
            "serve: [flow] mode is %r here; a flow in event-time mode holds each event for up to lateness_ms "
            "(%d ms) before scoring it: run the flow with EDDY_MODE=arrival for serving",
            config.flow.mode,
            config.flow.lateness_ms,
        )
    log.info(
        "serve: listening on http://%s:%d, events to '%s'", config.serve.host, config.serve.port, config.topics.events
    )
    serve(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
