"""Benchmark: the HTTP scoring gateway and the flow behind it, at rising request rates.

    python -m bench.serve [--rates 25,50,100,200,400] [--seconds 10] [--clients 64] [--gateways 1]

Starts the flow (arrival mode, tailing, ensemble as configured) and the gateway (`python -m dataflows.serve`)
on fresh topics, then offers POST /v1/score requests, one transactions event each, at each rate in turn for
`--seconds`, from `--clients` concurrent clients (an open loop: request i is due at i / rate, sent by the
next free client). Each reply's event_id is checked against its request's. For each rate: the rate reached,
latency p50/p99/max (from sending to the reply), errors (any status but 200, by status), mismatched replies
and lost requests (no answer at all). A rate is sustained when it reaches 95 % of the offered rate with no
error; the run ends at the first rate that is not, and is then measured again at half the highest sustained
rate (the target: p99 <= 100 ms there, 0 mismatches, 0 lost).

The load generator is Python (h11 on asyncio, `Connection`): `hey` or `oha` cannot check that a reply belongs
to its request. It shares the machine's cores with the flow, the gateway and the broker.
Prints figures for people, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import h11
import httpx
import orjson

from bench.flow import flow_env, fresh_topics
from dataflows.broker.admin import delete_topics
from dataflows.broker.consumer import read_to_end
from dataflows.flow.config import REPO_ROOT, load_config
from dataflows.tools import datasets

JSON = {"content-type": "application/json"}

SUSTAINED = 0.95
"""A rate is sustained when this share of it is reached, with no error."""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _events(n: int, tag: str) -> list[tuple[str, bytes]]:
    """(event_id, JSON body) of `n` transactions whose ids carry `tag`, so that no two steps share one."""
    out = []
    for event in datasets.transactions(n=n, seed=zlib.crc32(tag.encode()) % 1000):
        event_id = f"{tag}-{event['event_id']}"
        out.append((event_id, orjson.dumps({**event, "event_id": event_id})))
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection driven by h11 (the protocol library uvicorn and httpx use) over
    asyncio streams: a client costs a fraction of httpx's CPU per request, which a load generator sharing
    two cores with what it measures needs."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.h11: h11.Connection | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.h11.our_state is not h11.IDLE:
            await self._connect()
        conn = self.h11
        headers = [("host", self.host), ("content-type", "application/json"), ("content-length", str(len(body)))]
        self.writer.write(conn.send(h11.Request(method="POST", target=path, headers=headers)))
        self.writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status, chunks = 0, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    raise ConnectionError("the gateway closed the connection")
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            await self.close()
        return status, b"".join(chunks)

    async def _connect(self) -> None:
        await self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.h11 = h11.Connection(h11.CLIENT)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def offer(ports: list[int], rate: float, seconds: float, clients: int, bodies: list[tuple[str, bytes]]) -> dict:
    """Offer `rate` requests a second for `seconds` from `clients` concurrent clients; the figures."""
    bodies = bodies[: int(rate * seconds)]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    mismatched = lost = 0
    next_index = 0
    started = time.perf_counter()

    async def client(which: int) -> None:
        nonlocal next_index, mismatched, lost
        connection = Connection("127.0.0.1", ports[which % len(ports)])
        while next_index < len(bodies):
            i = next_index
            next_index += 1
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            asked, body = bodies[i]
            sent = time.perf_counter()
            try:
                status, reply = await asyncio.wait_for(connection.post("/v1/score", body), 30)
            except (OSError, ConnectionError, TimeoutError, h11.ProtocolError):
                lost += 1
                await connection.close()
                continue
            latencies.append(time.perf_counter() - sent)
            statuses[str(status)] += 1
            if status == 200 and orjson.loads(reply).get("event_id") != asked:
                mismatched += 1
        await connection.close()

    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    ok = statuses.get("200", 0)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else 0.0

    return {
        "offered_per_s": rate,
        "requests": len(bodies),
        "reached_per_s": round(ok / elapsed, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else 0.0,
        "errors": {status: count for status, count in statuses.items() if status != "200"},
        "mismatched": mismatched,
        "lost": lost,
    }


def _sustained(figures: dict) -> bool:
    return (
        figures["reached_per_s"] >= SUSTAINED * figures["offered_per_s"]
        and not figures["errors"]
        and not figures["lost"]
        and not figures["mismatched"]
    )


def _start(args: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 (the process keeps it)
    return subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def _wait_ready(urls: list[str], timeout_s: float = 180) -> None:
    """Until the flow answers a request through every gateway (a new event each try: one that timed out while
    the flow started has been scored, and a second try with its id is a duplicate)."""
    deadline = time.monotonic() + timeout_s
    tries = iter(_events(10_000, "warmup"))
    for url in urls:
        while True:
            _, body = next(tries)
            try:
                reply = httpx.post(f"{url}/v1/score", content=body, headers=JSON, timeout=60)
                if reply.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the gateway at {url} or the flow did not answer within {timeout_s:g} s")
            time.sleep(0.5)


def _flow_latency(bootstrap: str, topics, event_ids: set[str]) -> dict:
    """p50/p99 of the time between an event's and its prediction's Kafka timestamps (the gateway's producer
    stamps the one, the flow's the other): the flow's share of a request's latency."""
    sent, scored = (
        {orjson.loads(r.value)["event_id"]: r.timestamp for r in read_to_end(bootstrap, topic, timeout_s=120)}
        for topic in (topics.events, topics.predictions)
    )
    gaps = sorted(scored[e] - sent[e] for e in event_ids if e in sent and e in scored)
    if not gaps:
        return {}
    return {"p50_ms": gaps[len(gaps) // 2], "p99_ms": gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]}


def _http_stack() -> str:
    """What uvicorn runs on here: httptools and uvloop when installed, else h11 and asyncio."""
    import importlib

    found = []
    for name, instead in (("httptools", "h11"), ("uvloop", "asyncio")):
        try:
            importlib.import_module(name)
            found.append(name)
        except ImportError:
            found.append(instead)
    return " + ".join(found)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _row(f: dict) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(f["errors"].items())) or "0"
    return (
        f"| {f['offered_per_s']:>7g} | {f['reached_per_s']:>8} | {f['p50_ms']:>7} | {f['p99_ms']:>7} | "
        f"{f['max_ms']:>7} | {errors} | {f['mismatched']} | {f['lost']} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100,200,400,800", help="requests/s to offer, in turn")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each rate is offered")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes side by side")
    parser.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]

    bootstrap = load_config().bootstrap_servers
    topics = fresh_topics(bootstrap, 3)
    env = flow_env(topics, bootstrap, tail=True, mode="arrival", ensemble=args.ensemble)
    env["EDDY_SERVE_TIMEOUT_S"] = "5"
    logs = os.path.join(REPO_ROOT, "artifacts", "bench-serve")
    os.makedirs(logs, exist_ok=True)
    flow = _start([sys.executable, "-m", "bytewax.run", "dataflows.main"], env, f"{logs}/flow.log")
    ports = [_free_port() for _ in range(args.gateways)]
    gateways = [
        _start([sys.executable, "-m", "dataflows.serve", "--port", str(p)], env, f"{logs}/gateway{i}.log")
        for i, p in enumerate(ports)
    ]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    results: list[dict] = []
    try:
        _wait_ready(urls)
        cpu_before = [_cpu_s(proc.pid) for proc in [*gateways, flow]]
        for rate in rates:
            bodies = _events(int(rate * args.seconds), f"r{rate:g}")
            figures = asyncio.run(offer(ports, rate, args.seconds, args.clients, bodies))
            results.append(figures)
            print(_row(figures), flush=True)
            if not _sustained(figures):
                break
        sustained = [f["offered_per_s"] for f in results if _sustained(f)]
        highest = max(sustained, default=0.0)
        half = None
        if highest:
            bodies = _events(int(highest / 2 * args.seconds), "half")
            half = asyncio.run(offer(ports, highest / 2, args.seconds, args.clients, bodies))
            half["in_flow"] = _flow_latency(bootstrap, topics, {event_id for event_id, _ in bodies})
            print(_row(half), flush=True)
        cpu = [_cpu_s(proc.pid) - before for proc, before in zip([*gateways, flow], cpu_before, strict=True)]
        requests = sum(f["requests"] for f in [*results, *([half] if half else [])])
        cpu_ms = {
            "gateway_ms_per_request": round(sum(cpu[:-1]) * 1000 / requests, 3),
            "flow_ms_per_request": round(cpu[-1] * 1000 / requests, 3),
        }
    finally:
        for proc in [*gateways, flow]:
            proc.terminate()
        for proc in [*gateways, flow]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        delete_topics(bootstrap, topics.all())

    print()
    print("| offered/s | reached/s | p50 ms | p99 ms | max ms | errors | mismatched | lost |")
    print("|---|---|---|---|---|---|---|---|")
    for f in results:
        print(_row(f))
    print(f"highest sustained rate: {highest:g}/s" + (f"; at half of it, p99 {half['p99_ms']} ms" if half else ""))
    if half and half["in_flow"]:
        print(
            f"of which in the flow (event to prediction, Kafka timestamps): p50 {half['in_flow']['p50_ms']} ms, "
            f"p99 {half['in_flow']['p99_ms']} ms"
        )
    print(
        f"CPU per request: gateway {cpu_ms['gateway_ms_per_request']} ms, flow {cpu_ms['flow_ms_per_request']} ms "
        f"(HTTP stack: {_http_stack()})"
    )
    print(
        json.dumps(
            {
                "clients": args.clients,
                "gateways": args.gateways,
                "seconds": args.seconds,
                "ensemble": args.ensemble,
                "rates": results,
                "highest_sustained_per_s": highest,
                "at_half": half,
                **cpu_ms,
                "http_stack": _http_stack(),
                "load_average": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
