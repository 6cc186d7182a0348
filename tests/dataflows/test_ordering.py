"""Canonical event-time order: independent of partitioning, interleaving and batching."""

from __future__ import annotations

import copy
import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.flow.messages import Event, Label, Origin
from dataflows.flow.ordering import EventTimeOrder, sort_key

LATENESS = 50


def event(i: int, ts: int, partition: int, offset: int) -> Event:
    return Event(f"e{i:04d}", ts, {}, None, Origin("events", partition, offset), raw=b"{}")


@st.composite
def partitioned_streams(draw):
    """Events spread over partitions; inside a partition, out of order by at most LATENESS."""
    n_parts = draw(st.integers(1, 4))
    n = draw(st.integers(0, 60))
    stamps = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))
    parts = draw(st.lists(st.integers(0, n_parts - 1), min_size=n, max_size=n))
    jitter = draw(st.lists(st.integers(0, LATENESS), min_size=n, max_size=n))
    per_part: dict[int, list] = {p: [] for p in range(n_parts)}
    for i, (ts, p, j) in enumerate(zip(stamps, parts, jitter, strict=True)):
        per_part[p].append((ts + j, ts, i))
    streams = {}
    for p, rows in per_part.items():
        rows.sort()
        streams[p] = [event(i, ts, p, offset) for offset, (_, ts, i) in enumerate(rows)]
    return n_parts, streams


def read(streams: dict[int, list], choices: list[int], batch_sizes: list[int]) -> list[list[Event]]:
    """Interleave partitions as a reader might: pick a partition, take a batch from it."""
    cursors = dict.fromkeys(streams, 0)
    batches, k = [], 0
    while any(cursors[p] < len(s) for p, s in streams.items()):
        live = [p for p, s in streams.items() if cursors[p] < len(s)]
        p = live[choices[k % len(choices)] % len(live)]
        size = batch_sizes[k % len(batch_sizes)]
        batches.append(streams[p][cursors[p] : cursors[p] + size])
        cursors[p] += size
        k += 1
    return batches


def run(order: EventTimeOrder, batches: list[list[Event]]) -> tuple[list, list]:
    released, dead = [], []
    for batch in batches:
        out = order.push(batch, now=0.0)
        released += out.items
        dead += out.dead
    out = order.flush()
    return released + out.items, dead + out.dead


@settings(max_examples=200, deadline=None)
@given(partitioned_streams(), st.lists(st.integers(0, 10), min_size=1), st.lists(st.integers(1, 7), min_size=1))
def test_release_order_is_canonical_whatever_the_interleaving(stream, choices, batch_sizes):
    n_parts, streams = stream
    order = EventTimeOrder([f"events:{p}" for p in range(n_parts)], LATENESS, idle_timeout_s=1e9)
    released, dead = run(order, read(streams, choices, batch_sizes))
    everything = [e for s in streams.values() for e in s]
    assert dead == []
    assert [e.event_id for e in released] == [e.event_id for e in sorted(everything, key=sort_key)]


@settings(max_examples=100, deadline=None)
@given(
    partitioned_streams(),
    st.lists(st.integers(0, 10), min_size=1),
    st.lists(st.integers(1, 7), min_size=1),
    st.integers(0, 30),
)
def test_a_pickled_copy_resumes_identically(stream, choices, batch_sizes, cut):
    n_parts, streams = stream
    batches = read(streams, choices, batch_sizes)
    parts = [f"events:{p}" for p in range(n_parts)]
    whole, _ = run(EventTimeOrder(parts, LATENESS, idle_timeout_s=1e9), batches)
    first = EventTimeOrder(parts, LATENESS, idle_timeout_s=1e9)
    released = []
    for batch in batches[:cut]:
        released += first.push(batch, now=0.0).items
    resumed = pickle.loads(pickle.dumps(copy.deepcopy(first)))
    rest, _ = run(resumed, batches[cut:])
    assert [e.event_id for e in released + rest] == [e.event_id for e in whole]


def test_a_late_event_is_refused_with_its_reason():
    order = EventTimeOrder(["events:0"], lateness_ms=10, idle_timeout_s=1e9)
    order.push([event(1, 100, 0, 0), event(2, 200, 0, 1)], now=0.0)
    out = order.push([event(3, 150, 0, 2)], now=0.0)
    assert [d.reason for d in out.dead] == ["late"]
    assert "before the watermark 190" in out.dead[0].error
    assert out.dead[0].value == b"{}"
    assert order.counters["late_events"] == 1


def test_a_duplicate_is_refused_and_the_first_copy_in_event_time_wins():
    order = EventTimeOrder(["events:0", "events:1"], lateness_ms=0, idle_timeout_s=1e9)
    second = Event("same", 120, {"copy": 2}, None, Origin("events", 1, 0))
    first = Event("same", 110, {"copy": 1}, None, Origin("events", 0, 0))
    order.push([second], now=0.0)
    order.push([first], now=0.0)
    out = order.flush()
    assert [e.fields["copy"] for e in out.items] == [1]
    assert [d.reason for d in out.dead] == ["duplicate"]


def test_labels_follow_their_event_time_and_late_labels_are_applied_at_once():
    order = EventTimeOrder(["events:0", "labels:0"], lateness_ms=0, idle_timeout_s=1e9)
    label = Label("e0001", True, 150, Origin("labels", 0, 0))
    out = order.push([label, event(1, 100, 0, 0), event(2, 200, 0, 1)], now=0.0)
    assert [x.event_id for x in out.items] == ["e0001"]
    out = order.push([Label("e0002", False, 300, Origin("labels", 0, 1))], now=0.0)
    assert out.items == [label]
    assert [type(x).__name__ for x in order.flush().items] == ["Event", "Label"]
    late = order.push([Label("e0000", True, 10, Origin("labels", 0, 2))], now=0.0)
    assert [x.event_id for x in late.items] == ["e0000"]
    assert order.counters["labels_late"] == 1


def test_a_silent_partition_stops_holding_the_watermark_after_the_idle_timeout():
    order = EventTimeOrder(["events:0", "events:1"], lateness_ms=0, idle_timeout_s=5)
    assert order.push([event(1, 100, 0, 0), event(2, 200, 0, 1)], now=0.0).items == []
    assert order.next_wakeup(now=1.0) == 5.0
    assert order.tick(now=4.0).items == []
    assert [e.event_id for e in order.tick(now=5.0).items] == ["e0001", "e0002"]


def test_arrival_mode_releases_at_once_in_arrival_order():
    order = EventTimeOrder(["events:0"], mode="arrival")
    out = order.push([event(1, 200, 0, 0), event(2, 100, 0, 1)], now=0.0)
    assert [e.event_id for e in out.items] == ["e0001", "e0002"]


def test_partitions_read_to_their_end_or_empty_stop_holding_the_watermark():
    ends = {"events:0": 2, "events:1": 0, "labels:0": 0}
    order = EventTimeOrder(["events:0", "events:1", "labels:0"], lateness_ms=0, idle_timeout_s=1e9, ends=ends)
    assert [e.event_id for e in order.push([event(1, 100, 0, 0)], now=0.0).items] == []
    assert [e.event_id for e in order.push([event(2, 200, 0, 1)], now=0.0).items] == ["e0001", "e0002"]
    assert order.counters["idle_releases"] == 0


def test_when_tailing_an_empty_labels_partition_holds_nothing_back_until_it_speaks():
    ends = {"events:0": 5, "labels:0": 0}
    order = EventTimeOrder(
        ["events:0", "labels:0"], lateness_ms=0, idle_timeout_s=1e9, ends=ends, tail=True, quiet_topics=("labels",)
    )
    assert [e.event_id for e in order.push([event(1, 100, 0, 0), event(2, 200, 0, 1)], now=0.0).items] == ["e0001"]
    late = Label("e0001", True, 150, Origin("labels", 0, 0))
    assert order.push([late], now=0.0).items == [late]
    assert order.push([event(3, 300, 0, 2), event(4, 400, 0, 3)], now=0.0).items == []
    released = order.push([Label("e0003", True, 350, Origin("labels", 0, 1))], now=0.0).items
    assert [x.event_id for x in released] == ["e0002", "e0003"]


def test_when_tailing_an_empty_events_partition_still_holds_the_watermark():
    ends = {"events:0": 0, "events:1": 0}
    order = EventTimeOrder(["events:0", "events:1"], lateness_ms=0, idle_timeout_s=1e9, ends=ends, tail=True)
    assert order.push([event(1, 100, 0, 0), event(2, 200, 0, 1)], now=0.0).items == []
    out = order.push([event(3, 150, 1, 0), event(4, 250, 1, 1)], now=0.0)
    assert out.dead == []
    assert [e.event_id for e in out.items] == ["e0001", "e0003"]


def test_a_partition_with_unread_backlog_is_slow_not_idle():
    # events:1 had 2 messages at start-up and none has been read yet: however long it takes to get its turn,
    # it holds the watermark, so its events are not late (that would depend on how busy the machine is).
    ends = {"events:0": 2, "events:1": 2}
    order = EventTimeOrder(["events:0", "events:1"], lateness_ms=0, idle_timeout_s=5, ends=ends, tail=True)
    assert order.push([event(1, 100, 0, 0), event(2, 300, 0, 1)], now=0.0).items == []
    assert order.next_wakeup(now=1.0) == 5.0
    assert order.tick(now=1000.0).items == []
    out = order.push([event(3, 200, 1, 0)], now=1000.0)
    assert (out.dead, [e.event_id for e in out.items]) == ([], ["e0001"])
    # Read up to its start-up end, it can go idle like any partition.
    assert [e.event_id for e in order.push([event(4, 400, 1, 1)], now=1001.0).items] == ["e0003", "e0002"]
    assert [e.event_id for e in order.tick(now=1006.0).items] == ["e0004"]


def test_read_positions_survive_a_snapshot():
    ends = {"events:0": 3, "events:1": 1}
    order = EventTimeOrder(["events:0", "events:1"], lateness_ms=0, idle_timeout_s=5, ends=ends, tail=True)
    order.push([event(1, 100, 1, 0), event(2, 200, 0, 0)], now=0.0)
    resumed = pickle.loads(pickle.dumps(order))
    assert resumed.read_to == {"events:1": 1, "events:0": 1}
    resumed.push([], now=0.0)
    # events:1 goes idle; events:0 still has unread messages from start-up, so it holds the watermark at its
    # newest ts (200) however long it is silent (without the read positions, both idle would release all).
    assert [e.event_id for e in resumed.tick(now=100.0).items] == ["e0001"]
