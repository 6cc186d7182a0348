"""Refits run in the background, take effect at their scheduled position and survive pickling."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river import datasets

from models import lightgbm_member, refit
from models.ensemble import Ensemble

PHISHING = list(datasets.Phishing())


def small(**params) -> Ensemble:
    defaults = {"refit_every": 100, "window": 300, "lag": 30, "num_boost_round": 20}
    return Ensemble(**{**defaults, **params})


@pytest.mark.parametrize("background", ["thread", "process", None])
def test_a_refit_takes_effect_exactly_after_event_k_plus_lag(background):
    model = small(background=background)
    for i, (x, y) in enumerate(PHISHING[:200], start=1):
        model.predict_proba_one(x)
        model.learn_one(x, y)
        if i < 100:
            assert model.pending_refits == []
        if 100 <= i < 130:
            assert model.pending_refits == [1]
            assert model.lightgbm_version is None
            assert model.predict_proba_one_detailed(x).scores["lightgbm"] is None
        if 130 <= i < 200:
            assert model.pending_refits == []
            assert model.lightgbm_version == 1
            scored = model.predict_proba_one_detailed(x)
            assert scored.scores["lightgbm"] is not None
            assert scored.versions["lightgbm"] == 1
    assert model.pending_refits == [2]
    assert [r["effect_at"] for r in model.registry.versions()] == [130]


@pytest.mark.parametrize("background", ["thread", "process"])
def test_a_background_refit_arrives_with_its_model_parsed(background):
    """The scoring thread's first prediction with a new model does not parse it (~15 ms)."""
    model = small(background=background)
    for x, y in PHISHING[:129]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    assert model.lightgbm is None
    model.predict_proba_one(PHISHING[129][0])
    model.learn_one(*PHISHING[129])
    assert model.lightgbm_version == 1 and model.lightgbm._booster is not None


def test_predictions_keep_flowing_while_a_slow_refit_runs(monkeypatch):
    started, release = threading.Event(), threading.Event()
    real_encode = lightgbm_member.Encoded.of

    def slow_fit(*args, **kwargs):
        started.set()
        assert release.wait(30), "the test never released the fit"
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(lightgbm_member.Encoded, "of", slow_fit)
    model = small(lag=50)
    for x, y in PHISHING[:100]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    assert started.wait(10), "the refit did not start in the background"
    served = 0
    for x, y in PHISHING[100:149]:
        assert 0.0 <= model.predict_proba_one(x)[True] <= 1.0
        model.learn_one(x, y)
        served += 1
        assert model._queue.running() == [1]  # the fit is still blocked while we score and learn
    assert served == 49 and not release.is_set()
    release.set()
    x, y = PHISHING[149]
    model.learn_one(x, y)  # event k + lag: waits for the fit, then the model is in force
    assert model.lightgbm_version == 1


def run(model: Ensemble, events, restore_at=(), via=pickle) -> list[tuple[float, float | None]]:
    """Prequential scores; at each position in `restore_at` the model is replaced by a restored copy."""
    out = []
    for i, (x, y) in enumerate(events):
        if i in restore_at:
            model = pickle.loads(pickle.dumps(model)) if via is pickle else copy.deepcopy(model)
        scored = model.predict_proba_one_detailed(x)
        out.append((scored.score, scored.scores["lightgbm"]))
        model.learn_one(x, y)
    return out


EVENTS = PHISHING[:450]
UNINTERRUPTED = None


def uninterrupted():
    global UNINTERRUPTED
    if UNINTERRUPTED is None:
        UNINTERRUPTED = run(small(), EVENTS)
    return UNINTERRUPTED


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    restore_at=st.sets(st.integers(1, len(EVENTS) - 1), min_size=1, max_size=4),
    via=st.sampled_from(["pickle", "deepcopy"]),
)
def test_a_restored_run_reproduces_the_uninterrupted_predictions(restore_at, via):
    restored = run(small(), EVENTS, restore_at, pickle if via == "pickle" else copy)
    assert restored == uninterrupted()


@pytest.mark.parametrize("background", ["thread", "process", None])
def test_every_background_mode_gives_the_same_predictions(background):
    assert run(small(background=background), EVENTS) == uninterrupted()


@pytest.mark.parametrize("slice_rows", [7, 50, 300])
@pytest.mark.parametrize("restore_at", [set(), {123, 260}])
def test_process_refits_train_on_the_same_rows_from_slices_pickled_as_they_were_learned(
    monkeypatch, slice_rows, restore_at
):
    """Slices that cut the window anywhere (7 rows), align with it (50) or hold it whole (300), cached or
    pickled at the refit after a restore: the same models, so the same predictions."""
    monkeypatch.setattr(refit, "SLICE", slice_rows)
    sent: list[int] = []
    real_dumps = refit.pickle.dumps

    def counting_dumps(obj, *args, **kwargs):
        if isinstance(obj, tuple) and all(isinstance(row, dict) for row in obj):
            sent.append(len(obj))  # a slice of window rows
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(refit.pickle, "dumps", counting_dumps)
    assert run(small(background="process"), EVENTS, restore_at, pickle) == uninterrupted()
    if slice_rows < 100 and not restore_at:
        # Every learned row pickled about once, not once per window it is in (up to three here).
        assert sum(sent) < 1.2 * len(EVENTS)


def test_a_snapshot_stores_the_windows_as_the_slices_pickled_while_learning(monkeypatch):
    """The window and a pending refit's window reuse the bytes pickled as rows were learned; slices a pending
    refit still needs are kept although the window has moved past them."""
    monkeypatch.setattr(refit, "SLICE", 50)
    model = small(background="process")
    for x, y in EVENTS[:410]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    (job,) = model._queue.pending  # started at 400 over rows 101..400, in force after 430
    assert job.window["first_position"] == 101 and model._rows[0].position == 111
    cached = {id(blob) for blob in model._slices.blobs.values()}
    assert sorted(model._slices.blobs) == list(range(2, 8))  # rows 101..400: the window alone would drop 101..150
    state = model.__getstate__()
    window, pending = state["_rows"][0], state["_queue"].pending[0].rows
    assert sum(id(blob) in cached for blob in window.blobs) == 5  # 151..400; 111..150 pickled at the snapshot
    assert all(id(blob) in cached for blob in pending.blobs)
    restored = pickle.loads(pickle.dumps(model))
    assert [r.x for r in restored._rows] == [r.x for r in model._rows]
    assert list(restored._rows) == list(model._rows)
    assert restored._queue.pending[0].rows == job.rows


@pytest.mark.parametrize("at", [100, 101, 115, 129])
def test_a_refit_pending_at_a_snapshot_survives_recovery(at):
    """Restored while the refit of version 1 (started at 100, in force after 130) is pending."""
    model = small()
    for x, y in EVENTS[:at]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    assert model.pending_refits == [1]
    restored = pickle.loads(pickle.dumps(model))
    assert restored.pending_refits == [1] and restored._queue._futures == {}
    assert run(restored, EVENTS[at:]) == uninterrupted()[at:]
    assert restored.lightgbm_version == 4


def test_a_deep_copy_starts_no_thread_and_shares_no_future():
    model = small(lag=60)
    for x, y in EVENTS[:100]:
        model.learn_one(x, y)
    threads = threading.active_count()
    copied = copy.deepcopy(model)
    assert threading.active_count() <= threads
    assert copied._queue._futures == {} and copied.pending_refits == [1]


def test_refits_on_event_time():
    model = small(refit_every=None, refit_every_seconds=60.0, lag=5)
    for i, (x, y) in enumerate(EVENTS[:200]):
        model.learn_one(x, y, ts=1_700_000_000.0 + i)
    starts = [r["started_at"] for r in model.registry.versions()]
    assert starts == [61, 121, 181][: len(starts)] and len(starts) == 3


def test_a_deep_copy_shares_the_immutable_window_but_learns_independently():
    model = small(lag=60)
    for x, y in EVENTS[:100]:
        model.learn_one(x, y)
    copied = copy.deepcopy(model)
    assert copied._rows[0] is model._rows[0] and copied._queue.pending[0].rows is model._queue.pending[0].rows
    assert copied._rows is not model._rows and copied.river is not model.river
    before = pickle.dumps(model)
    for x, y in EVENTS[100:200]:
        copied.learn_one(x, y)
    assert pickle.dumps(model) == before


def test_the_refit_worker_process_exits_when_its_flow_is_killed():
    """A SIGKILLed flow cannot shut its pool down; its worker must not live on (nor its forkserver)."""
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, time\n"
            "from models.refit import _pool\n"
            "print(_pool().submit(os.getpid).result(), flush=True)\n"
            "time.sleep(120)\n",
        ],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        worker = int(owner.stdout.readline())
        os.kill(worker, 0)  # alive while its owner is
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.kill(worker, signal.SIGKILL)
        raise AssertionError(f"the refit worker {worker} outlived its killed flow")
    finally:
        if owner.poll() is None:
            owner.kill()


def test_the_refit_worker_gives_way_to_the_flow_for_the_cpu():
    from models.refit import NICE, _pool

    assert _pool().submit(os.nice, 0).result(timeout=60) == min(19, os.nice(0) + NICE)
    if hasattr(os, "SCHED_IDLE"):
        assert _pool().submit(os.sched_getscheduler, 0).result(timeout=60) == os.SCHED_IDLE


def test_refits_are_sent_to_the_worker_by_one_thread_started_once():
    from models.refit import RefitJob, _in_process

    jobs = [RefitJob(v, 0, 10, rows=({"x": 1.0}, {"x": 0.0}), labels=(True, False), window={}) for v in (1, 2)]
    for job in jobs:
        _in_process(job, {}).result(timeout=60)
    senders = [t for t in threading.enumerate() if t.name.startswith("eddy-refit-send")]
    assert [t.name for t in senders] == ["eddy-refit-sender"]


def test_a_refit_that_cannot_reach_the_worker_fails_its_future_instead_of_hanging():
    from models.refit import RefitJob, _in_process

    job = RefitJob(1, 0, 10, rows=({"x": 1.0}, {"x": lambda: 0}), labels=(True, False), window={})
    with pytest.raises(Exception, match="pickle"):
        _in_process(job, {}).result(timeout=60)


def test_a_fit_the_worker_has_not_done_in_time_is_done_by_the_flow_with_the_same_model(caplog):
    """A starved worker (SCHED_IDLE beside other busy work) must not stall the flow at an effect point."""
    model = small(background=None, refit_every=10**9)
    for x, y in PHISHING[:300]:
        model.learn_one(x, y)
    rows = tuple(row.x for row in model._rows)
    labels = tuple(row.y for row in model._rows)
    job = refit.RefitJob(1, 300, 330, rows=rows, labels=labels, window={}, num_boost_round=20)
    queue = refit.RefitQueue("process")
    refit._pool().submit(time.sleep, 3)  # the one worker is busy: this fit waits behind it
    queue.submit(job)
    with caplog.at_level("WARNING", logger="eddy"):
        [(_, result)] = queue.due(330, wait_s=0.1)
    assert "fitting it here instead" in caplog.text
    assert result.member.model_str == refit.run(job, yield_gil=False).member.model_str
