"""Feature state cut into shards (`dataflows.flow.shards`): the worker count, where Bytewax runs a key, the split
after the ordering step and the join before the learner, which together give the learner what one engine
over every group gives it, in the same order."""

from __future__ import annotations

import itertools
import os
import pickle
import random
import sqlite3
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.flow.config import load_config
from dataflows.flow.messages import DeadLetter, Event, FeaturedEvent, FeaturePart, Label, Origin, Release, ShardBatch
from dataflows.flow.shards import (
    WHOLE_KEY,
    FeatureJoin,
    ShardCountError,
    Splitter,
    entity_shard,
    shard_keys,
    worker_of_key,
    workers_from_argv,
)
from dataflows.flow.step_state import pack
from dataflows.flow.steps import ComputeFeatures, OrderByEventTime
from features import FeatureEngine

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000

EVERYONE = """\
-- group: everyone
-- entity: none
-- horizon: 1h
SELECT event_id, count(*) OVER (ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW) AS all_n_1h
FROM events
"""


@pytest.fixture(scope="module")
def sql_dir(tmp_path_factory) -> Path:
    """The shipped groups with the user's and the merchant's interleaved by file name, and one with no entity."""
    folder = tmp_path_factory.mktemp("sql")
    shipped = REPO / "sql" / "transactions"
    for i, name in enumerate(["merchant_day", "user_day", "merchant_short", "user_short"]):
        (folder / f"{i}_{name}.sql").write_text((shipped / f"{name}.sql").read_text())
    (folder / "4_everyone.sql").write_text(EVERYONE)
    return folder


def config_for(sql_dir: Path, **flow):
    base = load_config(env={})
    return replace(base, sql_dir=sql_dir, flow=replace(base.flow, **flow))


def event(i: int, ts: int, user: str, merchant: str, amount: float = 1.0) -> Event:
    fields = {"user_id": user, "merchant_id": merchant, "amount": amount, "category": "grocery", "country": "FR"}
    return Event(f"e{i:05d}", ts, fields, None, Origin("events", 0, i), raw=b"{}")


# -- the worker count and where keys run ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "environ", "workers"),
    [
        (["run.py", "dataflows.main"], {}, 1),
        (["run.py", "-w", "2", "dataflows.main"], {}, 2),
        (["run.py", "-w2", "-r", "dir", "-s", "1", "-b", "0", "dataflows.main"], {}, 2),
        (["run.py", "--workers-per-process=3", "dataflows.main"], {}, 3),
        (["run.py", "-i", "0", "-a", "localhost:1;localhost:2", "dataflows.main"], {}, 2),
        (["run.py", "-i", "1", "--addresses", "a:1;b:1", "-w", "2", "dataflows.main"], {}, 4),
        (["run.py", "dataflows.main"], {"BYTEWAX_WORKERS_PER_PROCESS": "2", "BYTEWAX_ADDRESSES": "a:1;b:1;c:1"}, 6),
        (["run.py", "-w", "1", "dataflows.main"], {"BYTEWAX_WORKERS_PER_PROCESS": "4"}, 1),  # the argument wins
    ],
)
def test_the_worker_count_is_read_as_bytewax_reads_it(argv, environ, workers):
    assert workers_from_argv(argv, environ) == workers


def test_a_hostfile_gives_the_process_count(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("a:1\nb:1\n\nc:1\n")
    environ = {"BYTEWAX_PROCESS_ID": "2", "BYTEWAX_HOSTFILE_PATH": str(hosts)}
    assert workers_from_argv(["run.py", "dataflows.main"], environ) == 3


PLACEMENT_FLOW = r"""
import os, threading
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource


class _Once(StatelessSourcePartition):
    def __init__(self, worker):
        self.worker, self.done = worker, False

    def next_batch(self):
        if self.done:
            raise StopIteration
        self.done = True
        return [("worker", threading.get_native_id(), self.worker)]


class Workers(DynamicSource):
    def build(self, step_id, worker_index, worker_count):
        return _Once(worker_index)


class _Print(StatelessSinkPartition):
    def write_batch(self, items):
        for item in items:
            os.write(1, (repr(item) + "\n").encode())  # one write a line: the workers' threads share stdout


class Print(DynamicSink):
    def build(self, step_id, worker_index, worker_count):
        return _Print()


flow = Dataflow("placement")
workers = op.input("workers", flow, Workers())
keys = op.input("keys", flow, TestingSource([(key, None) for key in os.environ["KEYS"].split(",")]))
ran = op.stateful_map("run", keys, lambda state, value: (state, threading.get_native_id()))
ran = op.map("where", ran, lambda kv: ("key", kv[1], kv[0]))
op.output("print", op.merge("all", workers, ran), Print())
"""


@pytest.mark.parametrize("workers", [2, 3])
def test_keys_run_on_the_worker_the_model_of_bytewaxs_routing_says(tmp_path, workers):
    """`worker_of_key` against the real placement: each worker thread is told its index by Bytewax (a
    dynamic source's `build`), and each key's logic reports the thread it runs on."""
    import ast
    import os

    (tmp_path / "placement.py").write_text(PLACEMENT_FLOW)
    keys = ["eddy", *shard_keys("user_id", workers), *shard_keys("merchant_id", workers), "none:0", "a", "b"]
    result = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "-w", str(workers), "placement:flow"],
        cwd=tmp_path,
        env={**os.environ, "KEYS": ",".join(keys)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    records = [ast.literal_eval(line) for line in result.stdout.splitlines() if line.startswith("(")]
    worker_of_thread = {thread: worker for kind, thread, worker in records if kind == "worker"}
    ran_on = {key: worker_of_thread[thread] for kind, thread, key in records if kind == "key"}
    assert ran_on == {key: worker_of_key(key, workers) for key in keys}
    for family in ("user_id", "merchant_id"):
        assert sorted(ran_on[key] for key in shard_keys(family, workers)) == list(range(workers))


def test_an_entitys_shard_is_crc32_of_its_text_whatever_the_process():
    assert entity_shard(("u17",), 3) == zlib.crc32(b"u17") % 3
    assert entity_shard((None,), 2) == entity_shard((None,), 2)
    assert entity_shard((0.0,), 7) == entity_shard((-0.0,), 7)
    code = "from dataflows.flow.shards import entity_shard; print([entity_shard((f'u{i}',), 5) for i in range(50)])"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1 and runs != {""}


# -- the split and the join together equal one engine -------------------------------------------------------


def whole_features(config, batches: list[list]) -> list:
    """What the learner received before the shards: one engine over every group, the batches in order."""
    step = ComputeFeatures(config, None, None, "eddy")
    version = step.engine.features_version
    out = []
    for seq, items in enumerate(batches):
        events = [item for item in items if isinstance(item, Event)]
        computed = {}
        if events:
            (part,), _ = step.on_batch([ShardBatch(seq, "eddy", None, [e.as_row() for e in events], version)])
            computed = part.features
        out.extend(
            FeaturedEvent(item, computed[item.event_id], version) if isinstance(item, Event) else item for item in items
        )
    return out


def sharded(config, batches: list[list], workers: int, rng: random.Random, chunk: int = 3) -> tuple[list, dict]:
    """The split, the shards and the join, with the shards' parts reaching the learner late and shuffled
    (releases in order, as from the one ordering key)."""
    splitter = Splitter(config.sql_dir, config.fields, workers, config.flow.mode)
    shards: dict[str, ComputeFeatures] = {}
    join = FeatureJoin()
    out, in_flight = [], []
    for items in batches:
        messages = splitter.split(items)
        arriving = []
        for key, message in messages:
            if isinstance(message, Release):
                assert key == "eddy"
                arriving.append(message)
            else:
                assert isinstance(message, ShardBatch) and message.key == key
                step = shards.setdefault(key, ComputeFeatures(config, None, None))
                parts, _ = step.on_batch([message])
                in_flight.extend(parts)
        rng.shuffle(in_flight)
        held = rng.randint(0, len(in_flight))
        arriving += in_flight[held:]
        del in_flight[held:]
        rng.shuffle(arriving)
        arriving.sort(key=lambda m: 0 if isinstance(m, Release) else 1 + rng.random())  # releases stay in order
        for start in range(0, len(arriving), chunk):
            out += join.push(arriving[start : start + chunk])
    out += join.push(in_flight)
    assert join.waiting == 0 and not join.parts
    return out, shards


@st.composite
def streams(draw):
    n = draw(st.integers(1, 120))
    gaps = draw(st.lists(st.sampled_from([0, 1, 500, 1_000, 60_000, 700_000]), min_size=n, max_size=n))
    items, ts = [], T0
    for i, gap in enumerate(gaps):
        ts += gap
        items.append(
            event(
                i,
                ts,
                draw(st.sampled_from(["u1", "u2", "u3", "u4", "u5"])),
                draw(st.sampled_from(["m1", "m2", "m3"])),
                draw(st.floats(-1e3, 1e3)),
            )
        )
        if draw(st.integers(0, 9)) == 0:
            items.append(Label(f"e{i:05d}", True, ts, Origin("labels", 0, i)))
        if draw(st.integers(0, 19)) == 0:
            items.append(DeadLetter(b"x", None, "duplicate", "order", Origin("events", 1, i), "duplicate"))
    stamps = list(itertools.accumulate((getattr(item, "ts", 0) for item in items), max))
    boundaries = [i for i in range(1, len(items)) if isinstance(items[i], Event) and stamps[i] > stamps[i - 1]]
    cuts = sorted(set(draw(st.lists(st.sampled_from(boundaries), max_size=10)))) if boundaries else []
    batches = [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]
    return (
        batches,
        draw(st.integers(1, 3)),
        draw(st.integers(0, 2**32)),
        draw(st.sampled_from(["event_time", "arrival"])),
    )


@pytest.fixture
def catalogs_loaded_once():
    """Every engine and splitter of the property test (all its examples) loads the folder as loaded once (a
    catalog is immutable): loading and checking it is most of the time of a new shard, not what the test is
    about. Only for the test that asks: another test may edit its folder."""
    import dataflows.flow.shards
    import features.engine
    from features.catalog import require_catalog

    cache = {}

    def load(sql_dir, fields):
        key = (str(sql_dir), tuple(fields.items()))
        if key not in cache:
            cache[key] = require_catalog(sql_dir, fields)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features.engine, "require_catalog", load)
        patch.setattr(dataflows.flow.shards, "require_catalog", load)
        yield


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=streams())
def test_split_shards_and_join_give_the_learner_what_one_engine_gives_in_the_same_order(
    sql_dir, catalogs_loaded_once, scenario
):
    batches, workers, seed, mode = scenario
    config = config_for(sql_dir, mode=mode)
    want = whole_features(config, batches)
    got, shards = sharded(config, batches, workers, random.Random(seed))
    assert [type(x).__name__ for x in got] == [type(x).__name__ for x in want]
    for g, w in zip(got, want, strict=True):
        if isinstance(w, FeaturedEvent):
            assert g.event is w.event and g.features_version == w.features_version
            assert list(g.features.items()) == list(w.features.items())  # values bit for bit, keys in order
        else:
            assert g is w
    # Each shard held only its entities' events.
    for key, step in shards.items():
        family = step.family
        if workers == 1:
            assert key == WHOLE_KEY and family is None
            continue
        if family == "none":
            assert key == "none:0"
            continue
        index = shard_keys(family, workers).index(key)
        for row in step.engine.buffer.table.select([family]).to_pylist():
            assert entity_shard((row[family],), workers) == index


# -- the join, piece by piece ------------------------------------------------------------------------------


def part(seq: int, key: str, family: str, features: dict) -> FeaturePart:
    return FeaturePart(seq, key, family, features, "v1")


def release(seq: int, items: list, parts: tuple[str, ...]) -> Release:
    return Release(seq, items, parts, ("user_id", "merchant_id"), "v1")


def test_the_join_waits_for_every_part_and_every_earlier_release():
    a, b, c = (event(i, T0 + i, "u1", "m1") for i in range(3))
    join = FeatureJoin()
    parts_0 = [
        part(0, "user_id:0", "user_id", {"e00000": {"u": 1}}),
        part(0, "user_id:1", "user_id", {"e00001": {"u": 2}}),
        part(0, "merchant_id:0", "merchant_id", {"e00000": {"m": 1}, "e00001": {"m": 2}}),
    ]
    # Release 1's parts, and some of release 0's, arrive before release 0 itself.
    assert join.push([part(1, "user_id:0", "user_id", {"e00002": {"u": 3}}), parts_0[2], parts_0[0]]) == []
    assert join.push([release(0, [a, b], ("user_id:0", "user_id:1", "merchant_id:0"))]) == []
    assert join.push([release(1, [c], ("user_id:0", "merchant_id:0"))]) == []
    assert join.push([part(1, "merchant_id:0", "merchant_id", {"e00002": {"m": 3}})]) == []  # 0 still waits
    out = join.push([parts_0[1]])
    assert [(s.event.event_id, s.features) for s in out] == [
        ("e00000", {"u": 1, "m": 1}),
        ("e00001", {"u": 2, "m": 2}),
        ("e00002", {"u": 3, "m": 3}),
    ]
    assert join.waiting == 0 and join.parts == {}


def test_labels_and_dead_letters_keep_their_place_and_a_late_event_becomes_one_there():
    a, b, c = (event(i, T0 + i, "u1", "m1") for i in range(3))
    label = Label("e00000", True, T0 + 1, Origin("labels", 0, 7))
    duplicate = DeadLetter(b"dup", None, "duplicate", "order", Origin("events", 2, 9), "duplicate")
    undecodable = DeadLetter(b"?", None, "not JSON", "decode", Origin("events", 0, 11), "not_json")
    join = FeatureJoin()
    out = join.push([release(0, [a, label, duplicate, b, c], ("user_id:0", "merchant_id:0")), undecodable])
    assert out == [undecodable]  # not part of the canonical sequence: passes at once
    out = join.push(
        [
            part(0, "merchant_id:0", "merchant_id", {"e00000": {"m": 1}, "e00002": {"m": 3}}),
            part(0, "user_id:0", "user_id", {"e00000": {"u": 1}, "e00002": {"u": 3}}),
        ]
    )
    assert [type(x).__name__ for x in out] == ["FeaturedEvent", "Label", "DeadLetter", "DeadLetter", "FeaturedEvent"]
    assert out[1] is label and out[2] is duplicate
    missing = "the feature engine returned no features for this event"
    assert (out[3].reason, out[3].stage, out[3].error, out[3].value) == ("late", "features", missing, b"{}")
    assert out[4].features == {"u": 3, "m": 3}


def test_features_come_out_in_the_catalogs_order_when_families_interleave():
    join = FeatureJoin()
    a = event(0, T0, "u1", "m1")
    names = ("m_day", "u_day", "m_short", "u_short")
    head = Release(0, [a], ("merchant_id:0", "user_id:0"), ("merchant_id", "user_id"), "v1", names)
    out = join.push(
        [
            head,
            part(0, "user_id:0", "user_id", {"e00000": {"u_day": 1, "u_short": 2}}),
            part(0, "merchant_id:0", "merchant_id", {"e00000": {"m_day": 3, "m_short": 4}}),
        ]
    )
    assert list(out[0].features.items()) == [("m_day", 3), ("u_day", 1), ("m_short", 4), ("u_short", 2)]


def test_a_release_out_of_sequence_is_refused():
    join = FeatureJoin()
    join.push([release(0, [], ())])
    with pytest.raises(RuntimeError, match="release 2 reached the learner where release 1 was due"):
        join.push([release(2, [], ())])


def test_what_waits_in_the_join_survives_a_snapshot():
    join = FeatureJoin()
    a = event(0, T0, "u1", "m1")
    join.push([release(0, [a], ("user_id:0", "merchant_id:0")), part(0, "user_id:0", "user_id", {"e00000": {"u": 1}})])
    resumed = pickle.loads(pickle.dumps(join))
    out = resumed.push([part(0, "merchant_id:0", "merchant_id", {"e00000": {"m": 2}})])
    assert [(s.event.event_id, s.features) for s in out] == [("e00000", {"u": 1, "m": 2})]
    assert resumed.next_seq == 1


# -- the split ---------------------------------------------------------------------------------------------


def test_the_split_sends_each_event_to_one_shard_per_family_and_the_release_to_the_learner(sql_dir):
    config = config_for(sql_dir)
    splitter = Splitter(config.sql_dir, config.fields, 2)
    items = [event(i, T0 + i * 1000, f"u{i % 4}", f"m{i % 3}") for i in range(12)]
    items.insert(3, Label("e00001", False, T0 + 1000, Origin("labels", 0, 0)))
    messages = splitter.split(items)
    (learner_key, head), *batches = messages
    assert learner_key == "eddy" and head.seq == 0 and head.items is items
    assert head.families == ("merchant_id", "user_id", "none")
    assert head.names == tuple(FeatureEngine(sql_dir, config.fields).feature_names)  # families interleave
    assert set(head.parts) == {key for key, _ in batches}
    for family in ("user_id", "merchant_id"):
        mine = [b for _, b in batches if b.family == family]
        assert sorted(r["event_id"] for b in mine for r in b.rows) == [f"e{i:05d}" for i in range(12)]
        for b in mine:
            assert b.key in shard_keys(family, 2)
            assert {entity_shard((r[family],), 2) for r in b.rows} == {shard_keys(family, 2).index(b.key)}
    assert [b.key for _, b in batches if b.family == "none"] == ["none:0"]
    assert splitter.split([]) == []
    assert splitter.split([items[3]])[0][1].seq == 1  # labels alone still take their place


def test_one_worker_keeps_one_engine_over_every_group(sql_dir):
    config = config_for(sql_dir)
    items = [event(i, T0 + i, f"u{i}", "m1") for i in range(5)]
    (_, head), (key, batch) = Splitter(config.sql_dir, config.fields, 1).split(items)
    assert key == WHOLE_KEY and batch.family is None and len(batch.rows) == 5
    assert head.families == (None,) and head.parts == (WHOLE_KEY,)
    (part,), _ = ComputeFeatures(config_for(sql_dir), None, None).on_batch([batch])
    assert list(part.features["e00000"]) == FeatureEngine(sql_dir, config.fields).feature_names


def test_the_split_refuses_what_is_out_of_event_time_order_in_its_place(sql_dir):
    """Event-time order is the whole stream's, not a shard's: a shard that has not seen the newer events of
    other entities would take the event. An event at or below the newest ts of an earlier release, or below
    one earlier in its own, is refused."""
    config = config_for(sql_dir)
    splitter = Splitter(config.sql_dir, config.fields, 3)
    first = [event(0, T0 + 5000, "u1", "m1"), event(1, T0 + 9000, "u2", "m2")]
    second = [event(2, T0 + 9000, "u3", "m3"), event(3, T0 + 12_000, "u1", "m1"), event(4, T0 + 11_000, "u4", "m1")]
    refusals = [
        [],
        [
            f"late: ts {T0 + 9000} is before the watermark {T0 + 9001} (max ts seen {T0 + 9000} - lateness 0 ms)",
            f"late: ts {T0 + 11_000} is before the watermark {T0 + 12_000} (max ts seen {T0 + 12_000} - lateness 0 ms)",
        ],
    ]
    for batch, refused in zip((first, second), refusals, strict=True):
        (_, head), *_ = splitter.split(batch)
        assert [x.value for x in head.items if isinstance(x, DeadLetter)] == [b"{}"] * len(refused)
        assert [x.error for x in head.items if isinstance(x, DeadLetter)] == refused
    assert [type(x).__name__ for x in head.items] == ["DeadLetter", "Event", "DeadLetter"]


def test_arrival_mode_refuses_nothing(sql_dir):
    config = config_for(sql_dir, mode="arrival")
    splitter = Splitter(config.sql_dir, config.fields, 2, "arrival")
    splitter.split([event(0, T0 + 5000, "u1", "m1")])
    (_, head), *_ = splitter.split([event(1, T0, "u1", "m1")])
    assert [type(x).__name__ for x in head.items] == ["Event"]


# -- recovery with another worker count ------------------------------------------------------------------


def test_a_resume_with_another_worker_count_is_refused_naming_both(sql_dir, tmp_path):
    config = config_for(sql_dir)
    step = OrderByEventTime(config, ["events:0"], None, False, None, tmp_path, "eddy", 2)
    step.on_batch([event(0, T0, "u1", "m1")])
    blob = step.snapshot()
    with pytest.raises(ShardCountError, match=r"cut into 2 shard\(s\).*this run has 3 worker\(s\)"):
        OrderByEventTime(config, ["events:0"], None, False, blob, tmp_path, "eddy", 3)
    OrderByEventTime(config, ["events:0"], None, False, blob, tmp_path, "eddy", 2)


def test_the_recovery_guard_refuses_another_worker_count_before_the_flow_starts(sql_dir, tmp_path):
    from dataflows.flow.recovery import RecoveryError, guard_recovery_dir
    from dataflows.flow.state_journal import StateJournal
    from dataflows.flow.wiring import FLOW_ID, STATEFUL_STEPS

    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(tmp_path), "1"], check=True, capture_output=True)
    StateJournal(tmp_path, "x", "y", ("rows",)).open(None)
    state = {"position": None, "order": None, "split": Splitter(sql_dir, config_for(sql_dir).fields, 2).state()}
    with sqlite3.connect(tmp_path / "part-0.sqlite3") as db:
        for step in STATEFUL_STEPS:
            blob = pack(step, state) if step == OrderByEventTime.STEP else pack(step, {})
            db.execute(
                "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
                (f"{FLOW_ID}.{step}", "eddy", 3, pickle.dumps(blob)),
            )
    with pytest.raises(RecoveryError, match=r"by a flow of 2 worker\(s\) in all; this run has 1 worker\(s\)"):
        guard_recovery_dir(["run.py", "-r", str(tmp_path), "dataflows.main"])
    guard_recovery_dir(["run.py", "-r", str(tmp_path), "-w", "2", "dataflows.main"])


def test_an_edit_reaches_every_shard_of_the_same_micro_batch(sql_dir, tmp_path, caplog):
    """The split notices the edit and stamps the version; each shard reloads on the new stamp, so a micro-batch
    never mixes versions, and the edit is logged once, not once per shard."""
    folder = tmp_path / "sql"
    folder.mkdir()
    for path in sql_dir.glob("*.sql"):
        (folder / path.name).write_text(path.read_text())
    config = config_for(folder)
    splitter = Splitter(folder, config.fields, 2)
    shards: dict[str, ComputeFeatures] = {}
    join = FeatureJoin()

    def run(items: list) -> list:
        messages = splitter.split(items)
        arriving = []
        for key, message in messages:
            if isinstance(message, ShardBatch):
                arriving += shards.setdefault(key, ComputeFeatures(config, None, None)).on_batch([message])[0]
            else:
                arriving.append(message)
        return join.push(arriving)

    before = run([event(i, T0 + i * 1000, f"u{i % 3}", f"m{i % 2}") for i in range(10)])
    user_short = folder / "3_user_short.sql"
    user_short.write_text(user_short.read_text().replace("AS user_count_10m", "AS user_n_10m"))
    with caplog.at_level("INFO", logger="eddy"):
        after = run([event(i, T0 + i * 1000, f"u{i % 3}", f"m{i % 2}") for i in range(10, 20)])
    old, new = before[0].features_version, after[0].features_version
    assert old != new == FeatureEngine(folder, config.fields).features_version
    assert {s.features_version for s in after} == {new}
    assert all("user_n_10m" in s.features and "user_count_10m" not in s.features for s in after)
    assert list(after[0].features) == FeatureEngine(folder, config.fields).feature_names
    messages = [r.getMessage() for r in caplog.records]
    assert sum("feature definitions reloaded" in m for m in messages) == 1
    assert not [m for m in messages if "version" in m and "shard" in m]


def test_pinned_shards_keep_their_keys_on_another_worker_count(sql_dir, tmp_path):
    """`[flow] feature_shards` keeps the shard count whatever the workers: the keys the state lives under
    are the ones the first run named, and the guard lets the resume through."""
    config = replace(config_for(sql_dir), flow=replace(config_for(sql_dir).flow, feature_shards=2))
    step = OrderByEventTime(config, ["events:0"], None, False, None, tmp_path, "eddy", 1)
    step.on_batch([event(i, T0 + i, f"u{i}", f"m{i}") for i in range(20)])
    first = {key for key, _ in step.on_eof()[0][1:]}
    blob = step.snapshot()
    resumed = OrderByEventTime(config, ["events:0"], None, False, blob, tmp_path, "eddy", 3)
    resumed.on_batch([event(i, T0 + 100 + i, f"u{i}", f"m{i}") for i in range(20, 40)])
    later = {key for key, _ in resumed.on_eof()[0][1:]}
    assert later <= first and len(first) == 5  # two shards of two families, and the family with no entity
    assert Splitter(sql_dir, config.fields, 2, workers=3).state()["keys"] != resumed.splitter.state()["keys"]


def test_one_shard_on_several_workers_sits_beside_the_learner(sql_dir):
    splitter = Splitter(sql_dir, config_for(sql_dir).fields, 1, workers=2)
    (key,) = splitter.keys[None]
    assert key.startswith(WHOLE_KEY) and worker_of_key(key, 2) == worker_of_key("eddy", 2)
