"""Canonical event-time order: the reason two runs over the same input give the same predictions.

Events and labels are held until the watermark passes them, then released sorted by
(`ts`, events before labels, `event_id`, topic, partition, offset). The watermark is the minimum, over the
input partitions, of the newest `ts` read from each, minus the allowed lateness: reading one partition
faster than another never moves it, so the order does not depend on partition count, batching, worker
count or where a run crashed and resumed.

Policies:
- late event (ts below the watermark when it arrives): refused as a dead letter, reason `late`.
- late label: applied at once, where it arrives (counted as `labels_late`).
- duplicate event (its `event_id` released before, within the dedupe horizon): dead letter, `duplicate`;
  the first copy in canonical order wins.
- idle partition (nothing read for `idle_timeout_s`): stops holding the watermark back until it speaks
  again; when every partition is idle, everything held is released. A partition that has not yet been read
  up to the end offset it had at start-up is never idle: it is waiting for its turn to be read, which on a
  busy machine can take longer than the timeout, and its messages would otherwise arrive late. Only
  idleness, a wall-clock matter, can make two runs differ, and only for messages produced after start-up.
- finished partition (`ends` gives each partition's end offset at start-up): when the run stops at the end
  of its input (not tailing), a partition read to its end, or empty from the start, no longer holds the
  watermark. When tailing, a partition of `quiet_topics` (the labels topic: a late label is still learned)
  that was empty at start-up holds nothing back until it speaks; events partitions wait for the idle timeout.
- leap (an event or label more than `max_clock_skew_ms` ahead of where the stream stands: its partition's
  newest `ts`, or the watermark plus the allowed lateness when that is further; for a partition's first
  message and for a label, the newest `ts` of any partition): held in order, but it neither moves its partition's newest
  `ts` (so the watermark) nor is released by the idle rule until the next message read from its partition
  decides. A next message less than `max_clock_skew_ms` behind it confirms it (time did move on: a quiet
  night, a backlog) and both count; one further behind refutes it: a refuted event is a dead letter, reason
  `future_ts`; a refuted label stays held, applied when the watermark reaches it (counted as
  `labels_ahead`). So no single message, however far ahead, moves the watermark: it takes a second message
  of its partition to agree. The very first message of a run, with nothing to compare it with, is taken as
  it is (the codec's check against the Kafka timestamp covers it: `dataflows.flow.codec`). The cost: after a
  silence of the whole stream longer than the skew, a partition's first message waits for its second.
  `max_clock_skew_ms = 0` turns the rule off.
- `arrival` mode releases everything at once in arrival order (lowest latency, no order guarantee).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from dataflows.flow.messages import DeadLetter, Event, Label

Item = Event | Label


@dataclass
class Released:
    items: list[Item] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def sort_key(item: Item) -> tuple:
    o = item.origin
    return (item.ts, 0 if isinstance(item, Event) else 1, item.event_id, o.topic, o.partition, o.offset)


class EventTimeOrder:
    """Holds, sorts and releases events and labels by event time; plain state, safe to pickle.

    >>> from dataflows.flow.messages import Origin
    >>> order = EventTimeOrder(["events:0", "events:1"], lateness_ms=0, idle_timeout_s=60)
    >>> def ev(i, ts, p):
    ...     return Event(f"e{i}", ts, {}, None, Origin("events", p, i))
    >>> order.push([ev(1, 100, 0), ev(2, 300, 0)], now=0.0).items
    []
    >>> [e.event_id for e in order.push([ev(3, 200, 1)], now=0.0).items]
    ['e1']
    >>> [e.event_id for e in order.flush().items]
    ['e3', 'e2']
    """

    def __init__(
        self,
        partitions: list[str],
        lateness_ms: int = 5_000,
        idle_timeout_s: float = 5.0,
        dedupe_horizon_ms: int = 86_400_000,
        mode: str = "event_time",
        ends: dict[str, int] | None = None,
        tail: bool = False,
        quiet_topics: tuple[str, ...] = (),
        max_clock_skew_ms: int = 1_800_000,
    ) -> None:
        self.partitions = list(partitions)
        self.ends = ends
        self.tail = tail
        self.quiet_topics = quiet_topics
        self.lateness_ms = lateness_ms
        self.idle_timeout_s = idle_timeout_s
        self.dedupe_horizon_ms = dedupe_horizon_ms
        self.mode = mode
        self.max_clock_skew_ms = max_clock_skew_ms
        self.leaps: dict[str, list[tuple]] = {}  # per partition, the sort keys of leaps awaiting its next message
        self.unsupported: set[tuple] = set()  # sort keys of held leaps: pending, or refuted labels
        self.newest: dict[str, int] = {}
        self.watermark: int | None = None
        self.held: list[tuple[tuple, Item]] = []
        self.seen: dict[str, int] = {}
        self.seen_order: deque[tuple[int, str]] = deque()
        self.remembered = 0  # event ids ever added to `seen_order`
        self.forgotten = 0  # ... and dropped from its front since
        self._new_ids: list[tuple[int, str]] | None = None
        self.finished: set[str] = set()
        self.spoke: set[str] = set()
        self.read_to: dict[str, int] = {}
        self.counters = {"late_events": 0, "labels_late": 0, "duplicates": 0, "idle_releases": 0}
        self.counters.update(future_ts=0, labels_ahead=0)
        self._heard: dict[str, float] = {}
        self._started: float | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_heard"] = {}
        state["_started"] = None
        return state

    # -- the dedupe memory as a journal: what a recovery snapshot writes instead of pickling it ----------

    def track_new_ids(self) -> None:
        """Keep the (ts, event_id) pairs remembered from now on until `take_new_ids` collects them."""
        self._new_ids = []

    def take_new_ids(self) -> list[tuple[int, str]]:
        """The (ts, event_id) pairs remembered since the last call, in order: `remembered` ends with them."""
        new, self._new_ids = self._new_ids, []
        if new is None:
            raise RuntimeError("EventTimeOrder.take_new_ids needs track_new_ids() first")
        return new

    def without_ids(self) -> EventTimeOrder:
        """A copy without the dedupe memory (which can hold millions of ids): what a snapshot pickles."""
        copy = EventTimeOrder.__new__(EventTimeOrder)
        copy.__dict__.update(self.__getstate__())
        copy.seen, copy.seen_order, copy._new_ids = {}, deque(), None
        return copy

    def restore_ids(self, ids: list[tuple[int, str]]) -> None:
        """Give a copy from `without_ids` back its dedupe memory: `ids` are the remembered pairs from number
        `self.remembered - len(ids)` on, at least the `remembered - forgotten` still held."""
        held = self.remembered - self.forgotten
        if len(ids) < held:
            raise ValueError(f"EventTimeOrder.restore_ids: {len(ids)} ids given, {held} still remembered")
        self.seen_order = deque(ids[len(ids) - held :])
        self.seen = {event_id: ts for ts, event_id in self.seen_order}

    def push(self, items: list[Item | DeadLetter], now: float) -> Released:
        """Take newly read items (in arrival order) at wall-clock time `now`; return what is released.

        A dead letter (a message the decoder refused) passes straight through, and counts as its partition
        having been read: it spoke, and its read position moved past it."""
        if self._started is None:
            self._started = now
        out = Released()
        skew = self.max_clock_skew_ms or float("inf")
        for item in items:
            if self.mode == "arrival":
                if type(item) is DeadLetter:
                    out.dead.append(item)
                    continue
                self._release(item, out)
                self._forget()
                continue
            part = f"{item.origin.topic}:{item.origin.partition}"
            self._heard[part] = now
            self.spoke.add(part)
            self.read_to[part] = max(self.read_to.get(part, 0), item.origin.offset + 1)
            if self.ends is not None and not self.tail and item.origin.offset + 1 >= self.ends.get(part, 0):
                self.finished.add(part)
            if type(item) is DeadLetter:  # refused by the decoder: it only tells that its partition was read
                out.dead.append(item)
                continue
            if self.watermark is not None and item.ts < self.watermark:
                if isinstance(item, Label):
                    self.counters["labels_late"] += 1
                    out.items.append(item)
                else:
                    self.counters["late_events"] += 1
                    out.dead.append(
                        _dead(
                            item,
                            "late",
                            f"late: ts {item.ts} is before the watermark "
                            f"{self.watermark} (allowed lateness {self.lateness_ms} ms)",
                        )
                    )
                continue
            key = sort_key(item)
            ts, newest = item.ts, self.newest.get(part)
            # The usual message, within the skew of its partition's newest with no leap pending, skips the rule.
            if (newest is not None and not self.leaps and ts - newest <= skew) or self._supported(part, item, out):
                if ts > self.newest.get(part, -1):
                    self.newest[part] = ts
            else:
                self.leaps.setdefault(part, []).append(key)
                self.unsupported.add(key)
            heapq.heappush(self.held, (key, item))
        if self.mode != "arrival":
            self._advance(now, out)
        return out

    def tick(self, now: float) -> Released:
        """Re-check idleness (call when `next_wakeup` has passed)."""
        out = Released()
        self._advance(now, out)
        return out

    def flush(self) -> Released:
        """End of input: release everything held."""
        out = Released()
        if self.held:
            self._set_watermark(max(k[0] for k, _ in self.held) + 1)
        self._drain(None, out)
        return out

    def next_wakeup(self, now: float) -> float | None:
        """Wall-clock time at which a partition going idle would next change the watermark."""
        if not self.held or self.mode == "arrival" or self._started is None:
            return None
        times = [
            self._heard.get(p, self._started)
            for p in self.partitions
            if not self._is_idle(p, now) and not self._is_finished(p) and not self._has_backlog(p)
        ]
        return min(times) + self.idle_timeout_s if times else None

    def _is_finished(self, part: str) -> bool:
        """Empty at start-up and silent since, or (not tailing) read to the end it had at start-up."""
        if self.ends is None:
            return False
        if part in self.finished:
            return True
        empty_and_silent = self.ends.get(part, 0) == 0 and part not in self.spoke
        return empty_and_silent and (not self.tail or part.rpartition(":")[0] in self.quiet_topics)

    def _has_backlog(self, part: str) -> bool:
        """Not yet read up to the end offset it had at start-up: slow to be read, not idle."""
        return self.ends is not None and self.read_to.get(part, 0) < self.ends.get(part, 0)

    def _is_idle(self, part: str, now: float) -> bool:
        if self._has_backlog(part):
            return False
        heard = self._heard.get(part, self._started if self._started is not None else now)
        return now - heard >= self.idle_timeout_s

    def _advance(self, now: float, out: Released) -> None:
        active = [p for p in self.partitions if not self._is_idle(p, now) and not self._is_finished(p)]
        if active:
            if any(p not in self.newest for p in active):
                return
            mark = min(self.newest[p] for p in active) - self.lateness_ms
        elif self.held:
            if all(self._is_finished(p) for p in self.partitions):
                mark = max(k[0] for k, _ in self.held) + 1
            else:
                # Every partition idle: release what the stream supports, not the leaps still unconfirmed.
                supported = [k[0] for k, _ in self.held if k not in self.unsupported]
                if not supported:
                    return
                self.counters["idle_releases"] += 1
                mark = max(supported) + 1
        else:
            return
        self._set_watermark(mark)
        self._drain(self.watermark, out)

    def _set_watermark(self, mark: int) -> None:
        if self.watermark is None or mark > self.watermark:
            self.watermark = mark

    def _drain(self, mark: int | None, out: Released) -> None:
        while self.held and (mark is None or self.held[0][0][0] < mark):
            _, item = heapq.heappop(self.held)
            self._release(item, out)
        self._forget()

    def _supported(self, part: str, item: Item, out: Released) -> bool:
        """Settle `part`'s pending leaps with `item`, its next message; then whether `item` itself is not a leap."""
        skew = self.max_clock_skew_ms
        if not skew:
            return True
        for key in self.leaps.pop(part, ()) if self.leaps else ():
            if key not in self.unsupported:
                continue  # released meanwhile: the watermark reached it
            if item.ts >= key[0] - skew:
                self.unsupported.discard(key)
                self.newest[part] = max(self.newest.get(part, key[0]), key[0])
            else:
                self._refute(key, part, item, out)
        anchor = self.newest.get(part)
        if (anchor is None or isinstance(item, Label)) and self.newest:
            # A partition's first message, or a label (labels come in any order of `ts`, a late one and an
            # early one side by side): against the newest `ts` of the whole stream.
            anchor = max(self.newest.values())
        if self.watermark is not None:
            anchor = max(anchor if anchor is not None else self.watermark, self.watermark + self.lateness_ms)
        return anchor is None or item.ts <= anchor + skew

    def _refute(self, key: tuple, part: str, after: Item, out: Released) -> None:
        """A leap its partition's next message does not follow: an event goes to the dead letters; a label
        stays held (unsupported) until the watermark reaches it, as a label never spoils the order."""
        index = next((i for i, (k, _) in enumerate(self.held) if k == key), None)
        if index is None:
            return
        item = self.held[index][1]
        if isinstance(item, Label):
            self.counters["labels_ahead"] += 1
            return
        self.unsupported.discard(key)
        self.held[index] = self.held[-1]
        self.held.pop()
        heapq.heapify(self.held)
        self.counters["future_ts"] += 1
        out.dead.append(
            _dead(
                item,
                "future_ts",
                f"future_ts: ts {item.ts} is more than max_clock_skew_ms {self.max_clock_skew_ms} ahead of "
                f"partition {part}'s stream (newest ts before it {self.newest.get(part)}, the next message's "
                f"{after.ts}): a producer clock ahead?",
            )
        )

    def _release(self, item: Item, out: Released) -> None:
        if self.unsupported:
            self.unsupported.discard(sort_key(item))
        if isinstance(item, Event):
            if item.event_id in self.seen:
                self.counters["duplicates"] += 1
                out.dead.append(
                    _dead(
                        item,
                        "duplicate",
                        f"duplicate: event_id {item.event_id!r} was already seen (ts {self.seen[item.event_id]})",
                    )
                )
                return
            self.seen[item.event_id] = item.ts
            self.seen_order.append((item.ts, item.event_id))
            self.remembered += 1
            if self._new_ids is not None:
                self._new_ids.append((item.ts, item.event_id))
        out.items.append(item)

    def _forget(self) -> None:
        if not self.seen_order:
            return
        horizon = self.seen_order[-1][0] - self.dedupe_horizon_ms
        while self.seen_order and self.seen_order[0][0] < horizon:
            ts, event_id = self.seen_order.popleft()
            self.forgotten += 1
            if self.seen.get(event_id) == ts:
                del self.seen[event_id]


def _dead(event: Event, reason: str, message: str) -> DeadLetter:
    return DeadLetter(event.raw, event.key, message, "order", event.origin, reason)
