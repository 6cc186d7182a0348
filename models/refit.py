"""Background LightGBM refits on a deterministic schedule.

A job is plain data (its training window, parameters and schedule), so it survives pickling and deep
copies. The thread that runs it lives beside the job, never inside the pickled state: a job restored from a
snapshot has no thread and is simply fitted again, which gives the same model because the fit is
deterministic. Either way its result is applied at exactly `effect_at`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any

import lightgbm

from models import lightgbm_member, tuning
from models.background import SerialWorker
from models.gate import Gate
from models.window_bounds import aligned_chunks, forget_blocks_before

log = logging.getLogger("eddy")


@dataclass(frozen=True)
class RefitJob:
    """Everything a refit needs, so that running it again anywhere gives the same model."""

    version: int
    started_at: int
    effect_at: int
    rows: tuple[Mapping, ...]
    labels: tuple[bool, ...]
    window: Mapping[str, Any]
    features_version: str | None = None
    params: Mapping[str, Any] | None = None
    num_boost_round: int = 100
    holdout: float = 0.2
    gate: Gate = field(default_factory=Gate)
    seed: int = 42
    trials: int = 0
    """Parameter sets a search tries (`models.tuning`); 0 fits `params` with `num_boost_round` rounds as they are."""
    refit_whole: bool = False
    """Once the gate passes, fit again on the whole window, holdout included, with the chosen parameters and
    rounds: the model in force then knows the newest rows too."""
    trigger: str = "schedule"
    """What started the refit: "schedule" (every `refit_every` labels), "time" (`refit_every_seconds`) or a
    drift detector's reason."""
    champion: lightgbm_member.LightGBMMember | None = None
    """The model in force when the refit started, which the new one must beat on the same holdout."""
    champion_version: int | None = None
    champion_last_position: int | None = None
    """The newest position the champion was trained on: it is compared on the held-out rows after it."""


@dataclass(frozen=True)
class RefitResult:
    version: int
    accepted: bool
    reason: str
    metrics: Mapping[str, float]
    member: lightgbm_member.LightGBMMember | None
    fit_seconds: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    """The parameters a search chose (over the job's)."""
    num_boost_round: int | None = None
    """The rounds the model was fitted with, when a search or early stopping chose them."""
    search: Mapping[str, Any] | None = None
    trained_on: str | None = None
    """"window" (holdout included, after the gate passed) or "train" (the window without its holdout)."""
    trained_until: int | None = None
    """The newest position the model was trained on."""
    fitted_by_flow: str | None = None
    """Why the flow fitted this refit itself instead of taking the background's result (None: it did not):
    `"timeout"` or `"worker_died"`. The model is the same either way: fits are deterministic."""
    rejected_by: str | None = None
    """Why a rejected refit was rejected: `"fit"` (no model: the fit failed or its training slice held a single
    class), `"gate"` (it failed the quality bar), `"champion"` (it passed the bar and lost to the model in
    force); None when accepted."""

    def record(self, job: RefitJob) -> dict[str, Any]:
        """The registry's metadata for this refit."""
        return {
            "version": self.version,
            "accepted": self.accepted,
            "reason": self.reason,
            "rejected_by": self.rejected_by,
            "started_at": job.started_at,
            "effect_at": job.effect_at,
            "window": dict(job.window),
            "features_version": job.features_version,
            "features": list(self.member.schema.columns) if self.member else [],
            "params": lightgbm_member.merged_params({**(job.params or {}), **self.params}, job.seed),
            "num_boost_round": self.num_boost_round or job.num_boost_round,
            "search": self.search,
            "trained_on": self.trained_on,
            "holdout": job.holdout,
            "trigger": job.trigger,
            "champion_version": job.champion_version,
            "gate": {"metric": job.gate.metric, "threshold": job.gate.threshold},
            "metrics": dict(self.metrics),
            "fit_seconds": self.fit_seconds,
        }


def run(job: RefitJob, yield_gil: bool = True) -> RefitResult:
    """Fit on the older part of the window and gate on the most recent `holdout` fraction (not shuffled),
    against the base rate and the champion; with `refit_whole`, a model that passes is fitted again on the
    whole window. With `trials`, a search (`models.tuning`) chooses the parameters and rounds first.

    `yield_gil` lets a scoring thread in the same process run between small slices of the encoding; a
    worker process has no such thread and encodes without pausing."""
    n_train = len(job.rows) - max(1, round(len(job.rows) * job.holdout))
    train_labels = job.labels[:n_train]
    if n_train < 2 or len(set(train_labels)) < 2:
        return RefitResult(job.version, False, "training slice holds a single class", {}, None, rejected_by="fit")
    started = time.perf_counter()
    train, holdout = slice(0, n_train), slice(n_train, None)
    try:
        window = lightgbm_member.Encoded.of(job.rows, job.labels, yield_gil)
        if job.trials and len(set(job.labels[holdout])) == 2:
            found = tuning.search(window, train, holdout, job.trials, job.seed, job.params or {})
            chosen, rounds = found.params, found.num_boost_round
            search = {"trials": found.trials, "valid_log_loss": found.valid_log_loss}
            gated, scores = found.model_str, found.valid_scores
        else:
            chosen, rounds, search = {}, job.num_boost_round, None
            booster = lightgbm_member.train(window, train, _params(job, chosen), rounds)
            gated = booster.model_to_string()
            scores = booster.predict(window.matrix[holdout], num_threads=1)
    except (ValueError, lightgbm.basic.LightGBMError) as error:
        return RefitResult(job.version, False, f"fit failed: {error}", {}, None, rejected_by="fit")
    holdout_rows, holdout_labels = job.rows[holdout], job.labels[holdout]
    base_rate = sum(train_labels) / n_train
    champion, unseen_from = None, 0
    first_held = job.window.get("first_position", 1) + n_train
    if job.champion is not None:
        champion = job.champion.predict_many(holdout_rows, yield_gil=yield_gil)
        unseen_from = min(len(holdout_labels), max(0, (job.champion_last_position or 0) + 1 - first_held))
    accepted, reason, metrics, rejected_by = job.gate.judge(holdout_labels, scores, base_rate, champion, unseen_from)
    member, trained_on, until = lightgbm_member.LightGBMMember(gated, window.schema), "train", first_held - 1
    if accepted and job.refit_whole:
        booster = lightgbm_member.train(window, slice(None), _params(job, chosen), rounds)
        member, trained_on = lightgbm_member.LightGBMMember(booster.model_to_string(), window.schema), "window"
        until = first_held - 1 + len(holdout_labels)
    seconds = round(time.perf_counter() - started, 3)
    return RefitResult(
        job.version,
        accepted,
        reason,
        metrics,
        member,
        seconds,
        chosen,
        rounds,
        search,
        trained_on,
        until,
        rejected_by=rejected_by,
    )


def _params(job: RefitJob, chosen: Mapping[str, Any]) -> dict[str, Any]:
    return lightgbm_member.merged_params({**(job.params or {}), **chosen}, job.seed)


MODES = ("thread", "process", None)


WAIT_S = 30.0
"""How long the flow waits at an effect point for a background fit before it fits there itself (a fit takes
about a second; the default `lag` gives it the time of 2,500 labels before that)."""


class RefitQueue:
    """Pending refits in schedule order; only the futures are live, and they are never pickled.

    `background="thread"` fits beside the caller (LightGBM releases the GIL, but encoding the window is
    Python and competes with the scoring thread); `"process"` fits in a shared worker process, costing one
    pickling of the window per refit on the caller; None fits synchronously when the result is due.
    """

    def __init__(self, background: str | None = "thread"):
        if background not in MODES:
            raise ValueError(f"background must be one of {MODES}; got {background!r}")
        self.background = background
        self.pending: list[RefitJob] = []
        self._futures: dict[int, Future] = {}
        if background == "process":
            _pool()

    def submit(self, job: RefitJob, pickled: Mapping[int, bytes] | None = None) -> None:
        """Queue `job`; `pickled` holds slices of its window already pickled (see `PickledSlices`)."""
        self.pending.append(job)
        self.pending.sort(key=lambda j: (j.effect_at, j.version))
        self.resume(pickled)

    def resume(self, pickled: Mapping[int, bytes] | None = None) -> None:
        """Start a fit for every pending job that has none (e.g. after a restore)."""
        if not self.background:
            return
        for job in self.pending:
            if job.version not in self._futures:
                future = _in_thread(job) if self.background == "thread" else _in_process(job, pickled or {})
                self._futures[job.version] = future

    def running(self) -> list[int]:
        """Versions whose fit is still in progress."""
        return [v for v, f in self._futures.items() if not f.done()]

    def due(self, position: int, wait_s: float = WAIT_S) -> list[tuple[RefitJob, RefitResult]]:
        """Results of the jobs that take effect at or before `position`, waiting for their fits if needed.

        A background fit not done `wait_s` after its effect point is done here instead:
        a fit is deterministic, so the model is the one the background would have given. A worker under
        SCHED_IDLE on a machine whose cores other work keeps busy could otherwise stall the flow for minutes."""
        out = []
        while self.pending and self.pending[0].effect_at <= position:
            job = self.pending.pop(0)
            future = self._futures.pop(job.version, None)
            out.append((job, _result(job, future, wait_s)))
        return out

    def __getstate__(self) -> dict:
        return {"background": self.background, "pending": list(self.pending)}

    def packed(self, pickled: Mapping[int, bytes]) -> RefitQueue:
        """A copy to snapshot, its pending windows as `PackedRows` (restored by `unpack`)."""
        copy = RefitQueue.__new__(RefitQueue)
        copy.__dict__.update(
            background=self.background,
            pending=[replace(job, rows=PackedRows.pack(job.rows, _first(job), pickled)) for job in self.pending],
            _futures={},
        )
        return copy

    def unpack(self) -> None:
        self.pending = [
            replace(job, rows=job.rows.unpack()) if isinstance(job.rows, PackedRows) else job for job in self.pending
        ]

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _futures={})
        if self.background == "process":
            _pool()


def _result(job: RefitJob, future: Future | None, wait_s: float) -> RefitResult:
    if future is None:
        return run(job, yield_gil=False)
    try:
        if future.done():
            return future.result()
        with _waited_on():
            return future.result(timeout=wait_s)
    except TimeoutError:
        log.warning(
            "refit v%d: the background fit is not done %.0f s after its effect point; fitting it here instead "
            "(same model: fits are deterministic)",
            job.version,
            wait_s,
        )
        return replace(run(job, yield_gil=False), fitted_by_flow="timeout")
    except BrokenProcessPool as error:
        # The worker process died (killed, out of memory): the next refit gets a new one (`_pool`), and this
        # one is fitted here, which gives the model the worker would have given.
        log.error(
            "refit v%d: the refit worker process died (%s); fitting it here instead (same model: fits are "
            "deterministic) and starting a new worker for the next refits",
            job.version,
            error or "BrokenProcessPool",
        )
        return replace(run(job, yield_gil=False), fitted_by_flow="worker_died")


@contextlib.contextmanager
def _waited_on() -> Iterator[None]:
    """While the flow waits for a fit, the worker runs at normal priority: the scoring thread is idle then, so
    the fit no longer competes with it, and under SCHED_IDLE on a machine whose cores other work keeps busy
    it would hardly run at all and the flow would stall until `WAIT_S`. Where the system refuses (no
    permission), the worker keeps its policy."""
    workers = list(_POOL._processes) if _POOL is not None and not _POOL._broken else []
    for pid in workers:
        _set_policy(pid, idle=False)
    try:
        yield
    finally:
        for pid in workers:
            _set_policy(pid, idle=True)


def _set_policy(pid: int, idle: bool) -> None:
    try:
        if idle:
            os.setpriority(os.PRIO_PROCESS, pid, NICE)
            if hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        else:
            if hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, pid, 0)
    except OSError:  # not permitted, or the worker is gone: the fit goes on as it was
        pass


def _first(job: RefitJob) -> int | None:
    return job.window.get("first_position") if job.rows else None


def _in_thread(job: RefitJob) -> Future:
    future: Future = Future()

    def work() -> None:
        try:
            future.set_result(_warmed(run(job)))
        except BaseException as error:
            future.set_exception(error)

    threading.Thread(target=work, name=f"eddy-refit-{job.version}", daemon=True).start()
    return future


_POOL: ProcessPoolExecutor | None = None
NICE = 10


def _pool() -> ProcessPoolExecutor:
    """The one worker process this Python process shares (forkserver: safe beside threads), started and
    warmed up (LightGBM imported) as soon as a queue needs it, so that the first refit does not pay ~1 s
    of start-up within its `lag`. A pool whose worker died is broken for good: it is replaced here."""
    global _POOL
    if _POOL is not None and _POOL._broken:
        log.warning("refit worker: the worker process died; starting a new one")
        atexit.unregister(_POOL.shutdown)
        _POOL.shutdown(wait=False, cancel_futures=True)
        _POOL = None
    if _POOL is None:
        _POOL = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_start_worker,
            initargs=(os.getpid(),),
        )
        atexit.register(_POOL.shutdown, cancel_futures=True)
        _POOL.submit(_ready)
    return _POOL


def _ready() -> bool:
    return True


def _start_worker(parent: int) -> None:
    """In the worker: give way to the flow for the CPU (a fit has `lag` labels to finish, while every
    event's latency waits on the scoring thread), and exit with the flow.

    Linux's SCHED_IDLE runs the worker only on a core nothing else wants. A niced worker still takes a core
    from the broker and the flow's Kafka threads for each fit, and the flow's latency rises until the fit is
    done. If the flow waits for a fit (its `lag`
    is up), its core is free, so the worker cannot starve. `NICE` is the fallback elsewhere."""
    os.nice(NICE)
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as error:  # a sandbox that forbids it: the nice value still applies
            log.warning("refit worker: could not switch to the idle CPU policy (%s); it runs niced", error)
    _exit_with(parent)


def _exit_with(parent: int, every_s: float = 1.0) -> None:
    """In the worker: exit once `parent` is gone. A killed flow (SIGKILL, OOM) cannot shut its pool down,
    and its worker, waiting for jobs or blocked writing a result nobody reads, would live on and keep the
    forkserver alive with it."""

    def watch() -> None:
        while True:
            time.sleep(every_s)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # the pid now belongs to another user's process
                os._exit(0)

    threading.Thread(target=watch, name="eddy-refit-exit-with-parent", daemon=True).start()


SLICE = 500
"""Rows pickled at a time for the worker: the whole window in one `pickle.dumps` would hold the GIL, and so
the scoring thread, for as long as it takes."""


class PickledSlices:
    """The rows of the window pickled a slice at a time as they are learned, for process refits.

    Pickling the whole window when a refit starts, even on a helper thread, takes the GIL from the scoring
    thread long enough for a flow at half load to fall behind; here each row is pickled once, a slice of
    `SLICE` rows at a time, and a refit hands the worker the slices it already has. Slice k holds the
    rows at positions k * SLICE + 1 .. (k + 1) * SLICE (positions count learned rows from 1). Not state:
    a restored model starts afresh at the next slice, and a refit pickles what is missing.

    >>> slices = PickledSlices(window=4)
    >>> for position in range(1, 2 * SLICE + 3):
    ...     slices.add(position, {"x": float(position)})
    >>> sorted(slices.blobs), len(pickle.loads(slices.blobs[1])), pickle.loads(slices.blobs[1])[0]
    ([1], 500, {'x': 501.0})
    """

    def __init__(self, window: int, keep_from: Callable[[], int] | None = None):
        self.window = window
        self.keep_from = keep_from
        """The first position still needed (the window's, or an older pending refit's); default the window's."""
        self.blobs: dict[int, bytes] = {}
        self._open: list[Mapping] = []
        self._open_at: int | None = None

    def add(self, position: int, x: Mapping) -> None:
        if (position - 1) % SLICE == 0:
            self._open, self._open_at = [], position
        if self._open_at is None or self._open_at + len(self._open) != position:
            self._open, self._open_at = [], None  # restored mid-slice, or a gap: wait for the next slice
            return
        self._open.append(x)
        if len(self._open) == SLICE:
            self.blobs[(position - 1) // SLICE] = pickle.dumps(tuple(self._open), protocol=pickle.HIGHEST_PROTOCOL)
            self._open, self._open_at = [], None
            first = self.keep_from() if self.keep_from is not None else position - self.window + 1
            forget_blocks_before(self.blobs, first, SLICE)


def _in_process(job: RefitJob, pickled: Mapping[int, bytes]) -> Future:
    """Pack the window on a helper thread (the slices already `pickled` as they are, the rest pickled a slice
    at a time, yielding the GIL between slices), then hand the job with its rows packed (a cheap copy for the
    pool's own pickling) to the worker."""
    future: Future = Future()

    def send() -> None:
        try:
            packed = PackedRows.pack(job.rows, _first(job), pickled, yield_gil=True)
            submitted = _pool().submit(_run_packed, replace(job, rows=packed))
            submitted.add_done_callback(lambda done: _settle(future, done))
        except BaseException as error:
            future.set_exception(error)

    _SENDER.submit(send)
    return future


_SENDER = SerialWorker("eddy-refit-sender")
"""Sends the windows to the worker process in submission order: starting a thread for every refit would cost
the scoring thread a wait under load (the new thread must take the GIL before `start` returns)."""


def _slices_of(
    rows: Sequence[Mapping], first: int | None, pickled: Mapping[int, bytes], yield_gil: bool
) -> Iterator[bytes]:
    """`rows` (at positions `first`, `first` + 1, ...) as pickled chunks cut at slice boundaries: the slices
    in `pickled` as they are, the rest pickled now (yielding the GIL after each when asked)."""
    for k, start, end in aligned_chunks(1 if first is None else first, len(rows), SLICE):
        blob = pickled.get(k) if first is not None and end - start == SLICE else None
        if blob is None:
            blob = pickle.dumps(tuple(rows[start:end]), protocol=pickle.HIGHEST_PROTOCOL)
            if yield_gil:
                time.sleep(0)
        yield blob


@dataclass(frozen=True)
class PackedRows:
    """Window rows as pickled slices, which is how a snapshot stores them: the slices `PickledSlices` made as
    the rows were learned are copied as bytes, rather than the window's dicts pickled again every epoch."""

    blobs: tuple[bytes, ...]

    @classmethod
    def pack(
        cls, rows: Sequence[Mapping], first: int | None, pickled: Mapping[int, bytes], yield_gil: bool = False
    ) -> PackedRows:
        return cls(tuple(_slices_of(rows, first, pickled, yield_gil)))

    def unpack(self) -> tuple[Mapping, ...]:
        return tuple(row for blob in self.blobs for row in pickle.loads(blob))


def _run_packed(job: RefitJob) -> RefitResult:
    """In the worker: the job arrives with its rows as `PackedRows`."""
    return run(replace(job, rows=job.rows.unpack()), yield_gil=False)


def _settle(future: Future, done: Future) -> None:
    """On the pool's result thread: hand the result over with its model already parsed (see `warm`)."""
    error = done.exception()
    if error is None:
        try:
            future.set_result(_warmed(done.result()))
        except BaseException as warm_error:
            future.set_exception(warm_error)
    else:
        future.set_exception(error)


def _warmed(result: RefitResult) -> RefitResult:
    if result.member is not None:
        result.member.warm()
    return result
