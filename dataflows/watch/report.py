"""A finished run's report: charts and a summary table from its metrics messages, as HTML and PNG.

python -m dataflows.watch.report [--metrics-file run/metrics.jsonl | --topic metrics] [--out artifacts/report]

The same figures feed the live dashboard (`dataflows.watch.dashboard`): `chart_data(messages)` turns metrics
messages into the series, marks (refits, drift) and summary that both draw.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from dataflows.broker.security import KafkaSecurity
from dataflows.flow.codec import Invalid, parse_ts
from dataflows.flow.config import ConfigError, load_config
from dataflows.flow.logs import configure_logging
from dataflows.flow.runs import run_registry_dir, runs_of

log = logging.getLogger("eddy.report")

PAGE = Path(__file__).with_name("dashboard.html")
MEMBERS = ("score", "river", "lightgbm")
MEMBER_NAMES = {"score": "ensemble", "river": "River", "lightgbm": "LightGBM"}
COLOURS = {"score": "#1b6ca8", "river": "#2e9e5b", "lightgbm": "#e07b24"}
DEFAULT_DRIFT_AT = "0.5"
"""The transactions generator changes its fraud pattern halfway through its stream (`datasets.transactions`)."""


class ReportError(RuntimeError):
    """A report that cannot be made; the message says why and what to do."""


# ---------------------------------------------------------------- reading metrics messages


def read_metrics_file(path: str | Path) -> list[dict]:
    """Metrics messages from a JSONL file (one message per line), as the backtest writes them."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such file (a JSONL file of metrics messages, e.g. a backtest's metrics.jsonl)")
    messages = []
    for line_no, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise ReportError(f"{path}:{line_no}: not valid JSON: {exc}") from exc
    return messages


def read_metrics_topic(
    bootstrap_servers: str, topic: str, timeout_s: float = 10.0, security: KafkaSecurity | None = None
) -> list[dict]:
    """Every metrics message on `topic`, from the beginning to its current end."""
    from dataflows.broker.admin import require_topics
    from dataflows.broker.consumer import read_to_end

    require_topics(bootstrap_servers, [topic], security=security)
    try:
        records = read_to_end(bootstrap_servers, topic, timeout_s, security)
    except TimeoutError as exc:
        raise ReportError(str(exc)) from exc
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return [m for m in (_loads(r.value) for r in records) if m is not None]


def read_registry(directory: str | Path | None, runs: list[str] | None = None) -> list[dict]:
    """The refit records (`v000012.json`) kept in a model registry directory, oldest first: those of the
    runs `runs` (each in its own subdirectory, `dataflows.flow.runs`), run by run; with `runs` None or empty
    (metrics from before runs had ids), those directly in `directory`."""
    if not directory:
        return []
    if runs:
        return [record for run in runs for record in read_registry(run_registry_dir(directory, run))]
    if not Path(directory).is_dir():
        return []
    records = []
    for path in sorted(Path(directory).glob("v*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("version", 0))


def _loads(value: bytes | None) -> dict | None:
    try:
        obj = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------- from messages to chart data


def ms_or_none(text: str | None) -> int | None:
    """Epoch milliseconds of ISO text, exactly (as the codec reads it); None if absent or not ISO."""
    if not text:
        return None
    try:
        return parse_ts({"ts": text}, "ts")
    except Invalid:
        return None


def _quality(message: dict, member: str, key: str) -> float | None:
    value = ((message.get("quality") or {}).get(member) or {}).get(key)
    return value if isinstance(value, int | float) else None


def _lag(message: dict) -> dict[str, int]:
    return {k: v for k, v in (message.get("consumer_lag") or {}).items() if isinstance(v, int | float)}


def _versions(message: dict) -> dict[str, Any]:
    """Model versions by member, if the message carries them (`model` or `versions`)."""
    for key in ("model", "versions", "model_versions"):
        value = message.get(key) or (message.get("learner") or {}).get(key)
        if isinstance(value, dict):
            return value
    return {}


def drift_event(messages: list[dict], drift_at: str | float | None) -> int | None:
    """The event count where the drift happens: a fraction (0 < x < 1) of the stream or an event count.

    The stream's length is what the run has scored plus what its events topic still holds (lag), so a
    fraction works on a live run too.
    """
    if drift_at is None or str(drift_at).lower() in {"", "none", "off"}:
        return None
    value = float(drift_at)
    if value >= 1:
        return int(value)
    if value <= 0 or not messages:
        return None
    last = messages[-1]
    lag = _lag(last)
    events_lag = next((v for k, v in lag.items() if "label" not in k), 0) if lag else 0
    return int(value * (_events(last) + events_lag))


def _time_at(points: list[tuple[float, int]], target: float) -> int | None:
    """Event time (ms) where a growing count reaches `target`, interpolated between messages."""
    previous = None
    for count, x in points:
        if count >= target:
            if previous is None or count == previous[0]:
                return x
            c0, x0 = previous
            return int(x0 + (x - x0) * (target - c0) / (count - c0))
        previous = (count, x)
    return None


def chart_data(
    messages: Iterable[dict], drift_at: str | float | None = None, registry: list[dict] | None = None
) -> dict:
    """Series over event time, marks (refits, drift) and a summary, from metrics messages in order."""
    messages = [m for m in messages if isinstance(m, dict) and m.get("type") in ("metrics", "final")]
    messages = [m for m in messages if ms_or_none(m.get("event_time")) is not None]
    xs = [ms_or_none(m["event_time"]) for m in messages]
    members = [m for m in MEMBERS if any(_quality(msg, m, "labels") is not None for msg in messages)]
    quality = {
        key: {member: [_quality(msg, member, key) for msg in messages] for member in members}
        for key in ("roc_auc_rolling", "log_loss_rolling", "roc_auc", "log_loss")
    }
    throughput = _throughput(messages)
    topics = sorted({t for msg in messages for t in _lag(msg)})
    lag = {t: [_lag(msg).get(t) for msg in messages] for t in topics}
    reasons = sorted({r for msg in messages for r in (msg.get("dead_letters") or {})})
    dead = {r: [(msg.get("dead_letters") or {}).get(r, 0) for msg in messages] for r in reasons}

    marks = _refit_marks(messages, xs, registry or [])
    drift = drift_event(messages, drift_at)
    drift_x = _time_at([(_events(m), x) for m, x in zip(messages, xs, strict=True)], drift) if drift else None
    if drift_x is not None:
        marks.append({"x": drift_x, "kind": "drift", "label": f"drift (event {drift:,})"})
    return {
        "x": xs,
        "members": members,
        "names": {m: MEMBER_NAMES[m] for m in members},
        "colours": {m: COLOURS[m] for m in members},
        "quality": quality,
        "throughput": throughput,
        "lag": lag,
        "dead_letters": dead,
        "marks": sorted(marks, key=lambda m: m["x"]),
        "summary": summary(messages, drift_x, xs, registry or []),
        "messages": len(messages),
        "latest": messages[-1] if messages else None,
    }


def _throughput(messages: list[dict]) -> list[float | None]:
    """Events per second (wall clock) since the last message stamped earlier, else the message's own figure.

    Messages built in one batch share their `at`, so the rate spans back to the previous distinct stamp.
    """
    out: list[float | None] = []
    stamps: list[tuple[int, int]] = []  # (at, events) of the last message at each distinct stamp
    for msg in messages:
        at, events = ms_or_none(msg.get("at")), _events(msg)
        earlier = [s for s in stamps if at is not None and s[0] < at]
        if earlier and events > earlier[-1][1]:
            rate = (events - earlier[-1][1]) * 1000 / (at - earlier[-1][0])
        elif msg.get("type") == "final" and out and out[-1] is not None:
            rate = out[-1]
        else:
            rate = msg.get("events_per_s") or msg.get("events_per_s_run")
            rate = rate if isinstance(rate, int | float) else None
        out.append(None if rate is None else round(rate, 1))
        if at is not None:
            if stamps and stamps[-1][0] == at:
                stamps[-1] = (at, events)
            else:
                stamps.append((at, events))
    return out


def _refit_marks(messages: list[dict], xs: list[int], registry: list[dict]) -> list[dict]:
    marks: list[dict] = []
    seen: set = set()
    for record in registry:
        points = [(_quality(m, "score", "labels") or 0, x) for m, x in zip(messages, xs, strict=True)]
        x = _time_at(points, record.get("effect_at") or 0)
        if x is None:
            continue
        decision = "accepted" if record.get("accepted") else "rejected"
        # A refit that lost to the model in force is healthy: its label says so, apart from a failed one.
        said = "lost to the model in force" if record.get("rejected_by") == "champion" else decision
        seen.add(record.get("version"))
        marks.append({"x": x, "kind": f"refit_{decision}", "label": f"LightGBM v{record.get('version')} {said}"})
    last: dict[str, Any] = {}
    for msg, x in zip(messages, xs, strict=True):
        version = _versions(msg).get("lightgbm")
        if version is not None and version != last.get("lightgbm") and version not in seen:
            seen.add(version)
            marks.append({"x": x, "kind": "refit_accepted", "label": f"LightGBM v{version}"})
        last["lightgbm"] = version
    if not marks:
        first = next((x for m, x in zip(messages, xs, strict=True) if _quality(m, "lightgbm", "labels")), None)
        if first is not None:
            marks.append({"x": first, "kind": "refit_accepted", "label": "LightGBM joins"})
    return marks


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summary(messages: list[dict], drift_x: int | None, xs: list[int], registry: list[dict]) -> dict:
    """Final quality per member (overall, and rolling before and after the drift) and the run's figures."""
    if not messages:
        return {"members": [], "run": []}
    last = messages[-1]
    rows = []
    for member in MEMBERS:
        if _quality(last, member, "labels") is None and not any(_quality(m, member, "labels") for m in messages):
            continue
        before = [m for m, x in zip(messages, xs, strict=True) if drift_x is not None and x < drift_x]
        after = [m for m, x in zip(messages, xs, strict=True) if drift_x is None or x >= drift_x]
        rows.append(
            {
                "member": MEMBER_NAMES[member],
                "labels": _quality(last, member, "labels"),
                "roc_auc": _quality(last, member, "roc_auc"),
                "log_loss": _quality(last, member, "log_loss"),
                "roc_auc_rolling_before": _mean([_quality(m, member, "roc_auc_rolling") for m in before]),
                "roc_auc_rolling_after": _mean([_quality(m, member, "roc_auc_rolling") for m in after]),
                "log_loss_rolling_before": _mean([_quality(m, member, "log_loss_rolling") for m in before]),
                "log_loss_rolling_after": _mean([_quality(m, member, "log_loss_rolling") for m in after]),
                "roc_auc_rolling_final": _quality(last, member, "roc_auc_rolling"),
            }
        )
    dead = last.get("dead_letters") or {}
    accepted = sum(1 for r in registry if r.get("accepted"))
    run = [
        ("events", _thousands(last.get("events", 0))),
        ("labels received (delayed)", _thousands(last.get("labels_received", 0))),
        ("event time", f"{messages[0].get('event_time')} → {last.get('event_time')}"),
        (
            "dead letters",
            _thousands(last.get("dead_letters_total", 0))
            + (" (" + ", ".join(f"{k} {_thousands(v)}" for k, v in sorted(dead.items())) + ")" if dead else ""),
        ),
        ("throughput (whole run)", f"{_thousands(last.get('events_per_s_run') or 0)} events/s"),
        (
            "latency p50 / p99",
            f"{last.get('latency_ms_p50')} / {last.get('latency_ms_p99')} ms (from the Kafka timestamp, most recent"
            " events: time an event waited in its topic, a replayed backlog for one, counts)",
        ),
        ("features version", str(last.get("features_version", ""))),
    ]
    if registry:
        run.append(
            (
                "LightGBM refits",
                f"{len(registry)} kept in the registry: {accepted} accepted, {len(registry) - accepted} rejected",
            )
        )
    return {"members": rows, "run": [list(r) for r in run], "final": last.get("type") == "final"}


def _events(message: dict) -> int | float:
    """The message's event count, 0 if it carries none or something else (a hostile or broken producer)."""
    value = message.get("events")
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _thousands(value: Any) -> str:
    """A count with thousands separators; anything else a metrics message may carry, as its text.

    >>> _thousands(12345.6), _thousands("<b>x</b>")
    ('12,346', '<b>x</b>')
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,.0f}"
    return str(value)


# ---------------------------------------------------------------- writing the report


def render_html(data: dict, title: str = "eddy run report") -> str:
    """The dashboard page with the data inlined: one self-contained file, no network, no server."""
    page = PAGE.read_text()
    # No "<" at all in the inlined script: topic data such as "</script>" or "<!--" cannot end or bend it.
    inline = json.dumps(data, default=str).replace("<", "\\u003c")
    safe = html.escape(title)
    page = page.replace("<title>eddy dashboard</title>", f"<title>{safe}</title>")
    page = page.replace("<h1>eddy — watching it learn</h1>", f"<h1>{safe}</h1>")
    return page.replace("<!--EDDY_DATA-->", f"<script>window.EDDY_DATA = {inline};</script>")


def render_png(data: dict, path: str | Path, title: str = "eddy run report") -> None:
    """The same charts, as one PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    xs = [datetime.fromtimestamp(x / 1000) for x in data["x"]]
    fig, axes = plt.subplots(2, 2, figsize=(14, 8.5), sharex=True)
    fig.suptitle(title, fontsize=14, x=0.01, ha="left")
    panels = [
        (axes[0][0], "Rolling ROC AUC", data["quality"].get("roc_auc_rolling", {})),
        (axes[0][1], "Rolling log loss", data["quality"].get("log_loss_rolling", {})),
    ]
    for ax, name, series in panels:
        for member, ys in series.items():
            _plot(ax, xs, ys, data["names"][member], data["colours"][member])
        ax.set_title(name, loc="left")
    ax = axes[1][0]
    _plot(ax, xs, data["throughput"], "events/s", "#1b6ca8")
    ax.set_title("Throughput (events/s) and consumer lag", loc="left")
    if data["lag"]:
        twin = ax.twinx()
        for i, (topic, ys) in enumerate(data["lag"].items()):
            _plot(twin, xs, ys, f"lag {topic}", ["#999999", "#c44e52", "#8172b2"][i % 3], style="--")
        twin.set_ylabel("messages behind")
        twin.legend(loc="upper right", fontsize=8)
    ax = axes[1][1]
    ax.set_title("Dead letters by reason (cumulative)", loc="left")
    for i, (reason, ys) in enumerate(data["dead_letters"].items()):
        _plot(ax, xs, ys, reason, plt.cm.tab10(i % 10))
    if not data["dead_letters"]:
        ax.text(0.5, 0.5, "no dead letters", transform=ax.transAxes, ha="center", va="center", color="#777777")
    for row in axes:
        for ax in row:
            for mark in data["marks"]:
                colour = {"drift": "#c44e52", "refit_rejected": "#999999"}.get(mark["kind"], "#e07b24")
                drift = mark["kind"] == "drift"
                when = datetime.fromtimestamp(mark["x"] / 1000)
                ax.axvline(when, color=colour, ls="--" if drift else ":", lw=2 if drift else 1)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    axes[1][0].set_xlabel("event time")
    axes[1][1].set_xlabel("event time (dotted: orange = LightGBM refit, red = drift)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot(ax, xs, ys, label, colour, style="-") -> None:
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if points:
        marker = "o" if len(points) < 3 else None
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label, color=colour, lw=1.6, marker=marker)


def write_report(
    messages: list[dict],
    out_dir: str | Path,
    drift_at: str | float | None = DEFAULT_DRIFT_AT,
    registry: list[dict] | None = None,
    title: str = "eddy run report",
) -> dict[str, Path]:
    """Write `report.html`, `report.png` and `summary.json` into `out_dir`; returns their paths."""
    data = chart_data(messages, drift_at, registry)
    if not data["x"]:
        raise ReportError("no metrics messages with an event time: did the run score any events?")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "png": out / "report.png", "summary": out / "summary.json"}
    paths["html"].write_text(render_html(data, title))
    render_png(data, paths["png"], title)
    paths["summary"].write_text(json.dumps(data["summary"], indent=2, default=str))
    return paths


def format_summary(summary_: dict) -> str:
    """The summary table as text, for the terminal."""
    lines = [f"{'member':<10} {'labels':>7} {'ROC AUC':>8} {'log loss':>9} {'AUC before':>11} {'AUC after':>10}"]
    for row in summary_["members"]:
        lines.append(
            f"{row['member']:<10} {row['labels'] or 0:>7,} {_f(row['roc_auc']):>8} {_f(row['log_loss']):>9} "
            f"{_f(row['roc_auc_rolling_before']):>11} {_f(row['roc_auc_rolling_after']):>10}"
        )
    lines += [f"{name}: {value}" for name, value in summary_["run"]]
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dataflows.watch.report", description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-file", help="a JSONL file of metrics messages (default: read the metrics topic)")
    parser.add_argument("--topic", help="metrics topic to read (default: from eddy.toml / EDDY_METRICS_TOPIC)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: from eddy.toml)")
    parser.add_argument("--registry-dir", help="model registry to mark refits from (default: [ensemble] registry_dir)")
    parser.add_argument("--out", default="artifacts/report", help="output directory (default: %(default)s)")
    parser.add_argument(
        "--drift-at",
        default=DEFAULT_DRIFT_AT,
        help="where to mark the drift: a fraction of the stream (0.5: the transactions generator's), "
        "an event count, or 'none' (default: %(default)s)",
    )
    parser.add_argument("--title", default="eddy run report", help="title of the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        config = load_config()
        if args.metrics_file:
            messages = read_metrics_file(args.metrics_file)
            source = args.metrics_file
        else:
            bootstrap = args.bootstrap_servers or config.bootstrap_servers
            topic = args.topic or config.topics.metrics
            log.info("reading metrics topic '%s' from %s", topic, bootstrap)
            messages = read_metrics_topic(bootstrap, topic, security=config.kafka_security)
            source = f"topic '{topic}'"
        registry_dir = args.registry_dir or config.ensemble.get("registry_dir")
        registry = read_registry(registry_dir, runs_of(messages))
        paths = write_report(messages, args.out, args.drift_at, registry, args.title)
    except (ReportError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # broker down, unreadable topic: say so instead of a traceback
        if type(exc).__name__ in {"BrokerError", "NoBrokersAvailable", "KafkaTimeoutError"}:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    data = json.loads(paths["summary"].read_text())
    print(f"{len(messages)} metrics messages from {source}")
    print(format_summary(data))
    print(f"report: {paths['html']}\n        {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
